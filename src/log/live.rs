//! The live log of one instance: one reader follows the head and keeps the newest events in
//! memory; every live consumer on the instance (subscriptions, key revocations) reads from
//! there, so database work does not grow with subscribers.
//!
//! Each event is read, opened and upcast once, with its aggregate's owner, and kept in a
//! window bounded by count and bytes. A consumer whose cursor is inside the window filters it
//! in memory and waits for the head to move; one that is behind (resuming from an old cursor,
//! or too slow to keep up) reads catch-up pages of its own from the database, a few at a
//! time per instance ([`CATCH_UP_READS`]), until it reaches the window again.

use std::collections::VecDeque;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chronicle_projections::{LogCursor, RecordedEvent};
use futures::Stream;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{LogFilter, LogReader, LogWaker};
use crate::metrics::SubscriptionGuard;

/// Events the window keeps at most.
const WINDOW_EVENTS: usize = 10_000;
/// Payload bytes (as JSON text; parsed, they take a few times more) the window keeps at most.
const WINDOW_BYTES: usize = 16 * 1024 * 1024;
/// Events the follower reads per page.
const FOLLOW_PAGE: u32 = 1_000;
/// Events a consumer reads per catch-up page, and takes from the window at once.
const CONSUMER_PAGE: usize = 500;
/// Catch-up reads running at once on one instance, whatever the number of consumers behind.
const CATCH_UP_READS: usize = 4;
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// An event with its aggregate's owner, as the window keeps it.
struct LiveEvent {
    event: RecordedEvent,
    owner: Option<String>,
    bytes: usize,
}

/// The newest events: every event after `first`, up to `head`.
struct Window {
    first: LogCursor,
    head: LogCursor,
    events: VecDeque<Arc<LiveEvent>>,
    bytes: usize,
}

/// The instance's live log; cheap to clone.
#[derive(Clone)]
pub struct LiveLog {
    window: Arc<RwLock<Window>>,
    head: watch::Receiver<LogCursor>,
    reader: LogReader,
    catch_up: Arc<Semaphore>,
}

impl LiveLog {
    /// Starts following the log from its head until `shutdown`.
    ///
    /// # Errors
    /// The log's head cannot be read.
    pub async fn start(
        reader: LogReader,
        waker: &LogWaker,
        shutdown: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let head = reader.head().await?;
        let window = Arc::new(RwLock::new(Window {
            first: head,
            head,
            events: VecDeque::new(),
            bytes: 0,
        }));
        let (moved, head_rx) = watch::channel(head);
        let follower = Follower {
            reader: reader.clone(),
            window: window.clone(),
            moved,
        };
        tokio::spawn(follower.follow(waker.clone(), shutdown));
        Ok(Self {
            window,
            head: head_rx,
            reader,
            catch_up: Arc::new(Semaphore::new(CATCH_UP_READS)),
        })
    }

    /// The newest event this instance has seen.
    pub fn head(&self) -> LogCursor {
        *self.head.borrow()
    }

    /// Every event after `after` that matches `filter`, each exactly once and in log order,
    /// for as long as the stream is polled.
    ///
    /// The stream is pulled: a slow consumer holds at most one page of its own, and once it
    /// falls out of the window it catches up from the database.
    pub fn tail(
        &self,
        after: LogCursor,
        filter: LogFilter,
    ) -> impl Stream<Item = RecordedEvent> + Send + 'static {
        let consumer = Consumer {
            live: self.clone(),
            filter,
            after,
            buffered: VecDeque::new(),
            head: self.head.clone(),
            _open: SubscriptionGuard::open(),
        };
        futures::stream::unfold(consumer, |mut consumer| async move {
            let event = consumer.next().await?;
            Some((event, consumer))
        })
    }
}

/// Reads the log as it grows into the window.
struct Follower {
    reader: LogReader,
    window: Arc<RwLock<Window>>,
    moved: watch::Sender<LogCursor>,
}

impl Follower {
    async fn follow(mut self, waker: LogWaker, shutdown: CancellationToken) {
        let mut waiter = waker.waiter();
        while !shutdown.is_cancelled() {
            let head = *self.moved.borrow();
            match self.read_after(head).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%error, cursor = %head, "live log read failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                        () = shutdown.cancelled() => {}
                    }
                    continue;
                }
            }
            tokio::select! {
                () = waiter.wait() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Adds the page after `head` to the window; true when more events may follow at once
    /// (the page ended before the log's head), so that a page that reached the head is not
    /// followed by a read that finds nothing.
    async fn read_after(&mut self, head: LogCursor) -> Result<bool, sqlx::Error> {
        let (page, owners) = self.reader.read_with_owners(head, FOLLOW_PAGE).await?;
        let next = page.next_cursor(head);
        if page.events.is_empty() {
            if next != head {
                self.window_mut().head = next;
                self.moved.send_replace(next);
            }
            return Ok(false);
        }
        let more = page.truncated || next < LogCursor::at(page.head);
        let live: Vec<Arc<LiveEvent>> = page
            .events
            .into_iter()
            .zip(owners)
            .map(|(event, owner)| {
                let bytes = event.payload.to_string().len();
                Arc::new(LiveEvent {
                    event,
                    owner,
                    bytes,
                })
            })
            .collect();
        self.window_mut().extend(live, next);
        self.moved.send_replace(next);
        Ok(more)
    }

    fn window_mut(&self) -> std::sync::RwLockWriteGuard<'_, Window> {
        self.window
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Window {
    /// Appends events up to `head`, then forgets the oldest beyond the bounds.
    fn extend(&mut self, events: Vec<Arc<LiveEvent>>, head: LogCursor) {
        for event in events {
            self.bytes += event.bytes;
            self.events.push_back(event);
        }
        self.head = head;
        while self.events.len() > WINDOW_EVENTS || self.bytes > WINDOW_BYTES {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            self.first = oldest.event.cursor;
        }
    }

    /// Up to `limit` events after `after` matching `filter`, and how far that looked; `None`
    /// when `after` is before the window.
    fn after(
        &self,
        after: LogCursor,
        filter: &LogFilter,
        limit: usize,
    ) -> Option<(Vec<RecordedEvent>, LogCursor)> {
        if after < self.first {
            return None;
        }
        let start = self.events.partition_point(|e| e.event.cursor <= after);
        let mut found = Vec::new();
        let mut looked = after.max(self.head);
        for live in self.events.range(start..) {
            if found.len() == limit {
                looked = found
                    .last()
                    .map_or(after, |event: &RecordedEvent| event.cursor);
                break;
            }
            if filter.matches(&live.event, live.owner.as_deref()) {
                found.push(live.event.clone());
            }
        }
        Some((found, looked))
    }
}

/// One live consumer.
struct Consumer {
    live: LiveLog,
    filter: LogFilter,
    after: LogCursor,
    buffered: VecDeque<RecordedEvent>,
    head: watch::Receiver<LogCursor>,
    /// Counts this consumer among the open subscriptions while it lives.
    _open: SubscriptionGuard,
}

impl Consumer {
    async fn next(&mut self) -> Option<RecordedEvent> {
        loop {
            if let Some(event) = self.buffered.pop_front() {
                return Some(event);
            }
            self.head.mark_unchanged();
            let from_window = {
                let window = self
                    .live
                    .window
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                window.after(self.after, &self.filter, CONSUMER_PAGE)
            };
            match from_window {
                Some((events, looked)) if events.is_empty() => {
                    self.after = looked;
                    // The follower stopped (shutdown) when the channel closed.
                    self.head.changed().await.ok()?;
                }
                Some((events, looked)) => {
                    self.after = looked;
                    self.buffered.extend(events);
                }
                None => self.catch_up().await,
            }
        }
    }

    /// Reads the next page behind the window from the database.
    async fn catch_up(&mut self) {
        let Ok(_permit) = self.live.catch_up.clone().acquire_owned().await else {
            return;
        };
        let limit = u32::try_from(CONSUMER_PAGE).unwrap_or(u32::MAX);
        match self.live.reader.read(self.after, &self.filter, limit).await {
            Ok(page) => {
                self.after = page.next_cursor(self.after);
                self.buffered.extend(page.events);
            }
            Err(error) => {
                tracing::warn!(%error, cursor = %self.after, "catch-up read failed; retrying");
                tokio::time::sleep(RETRY_AFTER_ERROR).await;
            }
        }
    }
}
