//! The live log of one instance: one reader follows the head and keeps the newest events in
//! memory; every live consumer on the instance (subscriptions, key revocations) reads from
//! there, so database work does not grow with subscribers.
//!
//! Each event is read, opened and upcast once, with its aggregate's owner, and kept in a
//! window bounded by count and bytes. The events this instance's group commits write are
//! handed over from memory ([`CommittedFeed`]); the follower reads the log only when a
//! notification names a position past the window's head (another instance's commit). A
//! consumer whose cursor is inside the window filters it in memory and waits for the head to
//! move; one that is behind (resuming from an old cursor, or too slow to keep up) reads
//! catch-up pages of its own from the database, a few at a time per instance
//! ([`CATCH_UP_READS`]), until it reaches the window again.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::{LogCursor, RecordedEvent};
use futures::Stream;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{EventFacts, LogFilter, LogReader, LogWaker, Page};
use crate::metrics::SubscriptionGuard;
use crate::reads::Replica;
use feed::Shared;
pub use feed::{CommittedFeed, Committing};

mod feed;

/// Events the window keeps at most.
const WINDOW_EVENTS: usize = 10_000;
/// Payload bytes (as JSON text) the window keeps at most. Parsed, they take about fifteen
/// times more: 10,000 request events of 521 bytes held about 70 MB (peak RSS under W4 with
/// a window of 10,000 events against one of 2,000).
const WINDOW_BYTES: usize = 2 * 1024 * 1024;
/// Events the follower reads per page.
const FOLLOW_PAGE: u32 = 1_000;
/// Events a consumer reads per catch-up page, and takes from the window at once.
const CONSUMER_PAGE: usize = 500;
/// Catch-up reads running at once on one instance, whatever the number of consumers behind.
const CATCH_UP_READS: usize = 4;
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// How long the follower waits for this instance's own commit to be handed over before it
/// reads it from the log instead.
const HANDOVER_WAIT: Duration = Duration::from_millis(250);

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
    shared: Arc<Shared>,
    head: watch::Receiver<LogCursor>,
    reader: LogReader,
    /// A streaming replica, which catch-up pages are read from first while it answers.
    replica: Option<Replica>,
    catch_up: Arc<Semaphore>,
}

impl LiveLog {
    /// Starts following the log from its head until `shutdown`, taking what `committed` is
    /// handed (the first live log given a feed is the one it feeds).
    ///
    /// # Errors
    /// The log's head cannot be read.
    pub async fn start(
        reader: LogReader,
        waker: &LogWaker,
        committed: &CommittedFeed,
        shutdown: CancellationToken,
    ) -> Result<Self, sqlx::Error> {
        let head = reader.head().await?;
        let (moved, head_rx) = watch::channel(head);
        let window = Window {
            first: head,
            head,
            events: VecDeque::new(),
            bytes: 0,
        };
        let shared = Arc::new(Shared::new(window, moved));
        let _ = committed.live.set(shared.clone());
        let follower = Follower {
            reader: reader.clone(),
            shared: shared.clone(),
            resyncs: waker.notified().resyncs,
        };
        tokio::spawn(follower.follow(waker.clone(), shutdown));
        Ok(Self {
            shared,
            head: head_rx,
            reader,
            replica: None,
            catch_up: Arc::new(Semaphore::new(CATCH_UP_READS)),
        })
    }

    /// Consumers behind the window read their catch-up pages from `replica` while its health
    /// check finds it up, and from the primary when the replica has nothing past them yet or
    /// does not answer.
    #[must_use]
    pub fn catching_up_from(self, replica: Replica) -> Self {
        Self {
            replica: Some(replica),
            ..self
        }
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

impl LiveEvent {
    /// The event as the window keeps it: its size is the one the log recorded, measured
    /// here only for events appended before sizes were kept.
    fn new((event, facts): (RecordedEvent, EventFacts)) -> Arc<Self> {
        let recorded = facts
            .text_bytes
            .and_then(|bytes| usize::try_from(bytes).ok());
        let bytes = recorded.unwrap_or_else(|| event.payload.to_string().len());
        Arc::new(Self {
            event,
            owner: facts.owner,
            bytes,
        })
    }
}

impl LiveLog {
    /// The catch-up page after `after`: the replica's when it moves the consumer on (the
    /// replica replays commits in log order, so its pages have no gaps either), else the
    /// primary's, which has every event up to the window.
    async fn catch_up_page(
        &self,
        after: LogCursor,
        filter: &LogFilter,
    ) -> Result<Page, sqlx::Error> {
        let limit = u32::try_from(CONSUMER_PAGE).unwrap_or(u32::MAX);
        if let Some(replica) = self.replica.as_ref().filter(|replica| replica.is_up()) {
            match replica.reads.log.read(after, filter, limit).await {
                Ok(page) if page.next_cursor(after) > after => {
                    crate::metrics::catch_up_read("replica");
                    return Ok(page);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::debug!(%error, cursor = %after, "replica catch-up read failed; reading the primary");
                }
            }
        }
        crate::metrics::catch_up_read("primary");
        self.reader.read(after, filter, limit).await
    }
}

/// Whether the window lacks committed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behind {
    No,
    /// The lacking events are this instance's own commit, about to be handed over.
    HandedOver,
    Yes,
}

/// Reads the log into the window when others committed what the window lacks.
struct Follower {
    reader: LogReader,
    shared: Arc<Shared>,
    /// The waker's resynchronizations seen (after each, the log is read once).
    resyncs: u64,
}

impl Follower {
    async fn follow(mut self, waker: LogWaker, shutdown: CancellationToken) {
        let mut waiter = waker.waiter();
        let mut handed = self.shared.moved.subscribe();
        let mut must_read = true;
        while !shutdown.is_cancelled() {
            let behind = if must_read {
                Behind::Yes
            } else {
                self.behind(&waker)
            };
            if behind == Behind::HandedOver {
                handed.mark_unchanged();
                if self.shared.handing_over(waker.notified().through) {
                    // Bounded: a handover that does not come is read.
                    let handover = tokio::time::timeout(HANDOVER_WAIT, handed.changed());
                    must_read = !matches!(handover.await, Ok(Ok(())));
                }
                continue;
            }
            if behind == Behind::Yes {
                let head = *self.shared.moved.borrow();
                match self.read_after(head).await {
                    Ok(more) => must_read = more,
                    Err(error) => {
                        tracing::warn!(%error, cursor = %head, "live log read failed; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(RETRY_AFTER_ERROR) => {}
                            () = shutdown.cancelled() => {}
                        }
                        continue;
                    }
                }
                if must_read {
                    continue;
                }
            }
            let generation = waker.generation();
            tokio::select! {
                () = waiter.wait() => {}
                () = shutdown.cancelled() => {}
            }
            // The fallback poll (no notification at all) reads, in case one was lost.
            must_read = waker.generation() == generation;
        }
    }

    /// Whether a notification named a position past the window's head (which this
    /// instance's group committer may be handing over), or notifications may have been
    /// missed since the last read.
    fn behind(&mut self, waker: &LogWaker) -> Behind {
        let notified = waker.notified();
        let resynced = std::mem::replace(&mut self.resyncs, notified.resyncs) != notified.resyncs;
        if resynced {
            Behind::Yes
        } else if notified.through <= self.shared.moved.borrow().position {
            Behind::No
        } else if self.shared.handing_over(notified.through) {
            Behind::HandedOver
        } else {
            Behind::Yes
        }
    }

    /// Adds the page after `head` to the window; true when more events may follow at once
    /// (the page ended before the log's head), so that a page that reached the head is not
    /// followed by a read that finds nothing.
    async fn read_after(&mut self, head: LogCursor) -> Result<bool, sqlx::Error> {
        let (page, facts) = self.reader.read_with_owners(head, FOLLOW_PAGE).await?;
        let next = page.next_cursor(head);
        let more = page.truncated || next < LogCursor::at(page.head);
        let live = page.events.into_iter().zip(facts).map(LiveEvent::new);
        self.shared.extend(live.collect(), next);
        Ok(more)
    }
}

impl Window {
    /// Appends the events past the head (the committed feed may have added some of a page
    /// while it was read), moves the head to `head` unless it is past it already, then
    /// forgets the oldest beyond the bounds; returns the head.
    fn extend(&mut self, events: Vec<Arc<LiveEvent>>, head: LogCursor) -> LogCursor {
        for event in events {
            if event.event.cursor > self.head {
                self.head = event.event.cursor;
                self.bytes += event.bytes;
                self.events.push_back(event);
            }
        }
        self.head = self.head.max(head);
        while self.events.len() > WINDOW_EVENTS || self.bytes > WINDOW_BYTES {
            let Some(oldest) = self.events.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
            self.first = oldest.event.cursor;
        }
        self.head
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
                    .shared
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
        match self.live.catch_up_page(self.after, &self.filter).await {
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
