//! The hand-over between this instance's group committer and its live log: the window the
//! follower and the committer both extend, and the committer's announcement of what it is
//! committing.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, RwLockWriteGuard};

use chronicle_projections::{LogCursor, RecordedEvent};
use tokio::sync::watch;

use super::{LiveEvent, Window};
use crate::log::EventFacts;

/// The window and the watch of its head, which the follower and the committed feed both
/// move, and the positions the group committer is committing (first, last).
pub(super) struct Shared {
    pub(super) window: RwLock<Window>,
    pub(super) moved: watch::Sender<LogCursor>,
    committing: Mutex<Option<(i64, i64)>>,
}

impl Shared {
    /// A window from `head` on, nothing committing.
    pub(super) fn new(window: Window, moved: watch::Sender<LogCursor>) -> Self {
        Self {
            window: RwLock::new(window),
            moved,
            committing: Mutex::new(None),
        }
    }

    fn committing(&self) -> MutexGuard<'_, Option<(i64, i64)>> {
        self.committing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the positions through `notified` are this instance's commit, being handed
    /// over right after the window's head.
    pub(super) fn handing_over(&self, notified: i64) -> bool {
        let head = self.moved.borrow().position;
        matches!(*self.committing(), Some((first, last)) if first == head + 1 && notified <= last)
    }

    fn window_mut(&self) -> RwLockWriteGuard<'_, Window> {
        self.window.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `events` (in log order) that follow the head, and moves the head to `head`.
    pub(super) fn extend(&self, events: Vec<Arc<LiveEvent>>, head: LogCursor) {
        let moved = self.window_mut().extend(events, head);
        self.moved.send_replace(moved);
    }
}

/// Where the instance's group committer hands the events it committed to the live log, so
/// that the log is not read back for them; cheap to clone, and a no-op until
/// [`LiveLog::start`](super::LiveLog::start) is given it.
#[derive(Clone, Default)]
pub struct CommittedFeed {
    pub(super) live: Arc<OnceLock<Arc<Shared>>>,
}

impl CommittedFeed {
    /// Announces that the group committer is about to commit log positions `first..=last`,
    /// so that the follower, woken by their notification, waits for them to be handed over
    /// instead of reading them; until the guard is dropped.
    pub fn committing(&self, first: i64, last: i64) -> Committing<'_> {
        let shared = self.live.get();
        if let Some(shared) = shared {
            *shared.committing() = Some((first, last));
        }
        Committing { shared }
    }

    /// Adds one transaction's `events` (open, in log order, each with its facts)
    /// to the window when the first directly follows its head: every earlier position is then
    /// in the window already. Otherwise (a rolled-back transaction's positions in between,
    /// or another instance's commit not read yet) the follower reads them from the log.
    pub fn publish(&self, events: Vec<(RecordedEvent, EventFacts)>) {
        let Some(shared) = self.live.get() else {
            return;
        };
        let events: Vec<Arc<LiveEvent>> = events.into_iter().map(LiveEvent::new).collect();
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return;
        };
        let (first, last) = (first.event.cursor, last.event.cursor);
        let mut window = shared.window_mut();
        if first.position == window.head.position + 1 {
            let head = window.extend(events, last);
            drop(window);
            shared.moved.send_replace(head);
        }
    }
}

/// The group committer's announcement of the positions it is committing; withdrawn when
/// dropped (handed over or not).
pub struct Committing<'f> {
    shared: Option<&'f Arc<Shared>>,
}

impl Drop for Committing<'_> {
    fn drop(&mut self) {
        if let Some(shared) = self.shared {
            *shared.committing() = None;
        }
    }
}

#[cfg(test)]
mod tests;
