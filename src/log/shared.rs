//! One read of the log per place and wake-up, shared by this instance's projectors.
//!
//! Projectors follow the same log, and caught up they all ask for the page after the same
//! cursor each time events are committed. Reading that page once, unfiltered, and letting
//! each projector keep its own events turns one query per projector and commit into one per
//! commit. A page is reused only within the wake-up it was read in and for [`FRESH_FOR`]:
//! a later commit bumps the waker, so no consumer waits on a page read before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chronicle_projections::LogCursor;
use tokio::sync::OnceCell;

use super::{LogFilter, LogReader, LogWaker, Page};

/// How long a page serves later readers of the same place in the same wake-up (a consumer
/// woken by its poll timer, not by a notification, must not get an old page).
const FRESH_FOR: Duration = Duration::from_millis(50);

type Slot = (Instant, Arc<OnceCell<Arc<Page>>>);

/// Unfiltered pages of the log, read at most once per (cursor, size) and wake-up.
#[derive(Clone)]
pub struct SharedPages {
    reader: LogReader,
    waker: LogWaker,
    slots: Arc<Mutex<Slots>>,
}

#[derive(Default)]
struct Slots {
    generation: u64,
    by_place: HashMap<(LogCursor, u32), Slot>,
}

impl SharedPages {
    /// Pages read with `reader`, shared within each of `waker`'s wake-ups.
    pub fn new(reader: LogReader, waker: LogWaker) -> Self {
        Self {
            reader,
            waker,
            slots: Arc::default(),
        }
    }

    /// Up to `limit` committed events after `after`, of every aggregate type (see
    /// [`LogReader::read`]); a concurrent or recent read of the same place is reused.
    ///
    /// # Errors
    /// Any database error (not cached: the next reader tries again).
    pub async fn read(&self, after: LogCursor, limit: u32) -> Result<Arc<Page>, sqlx::Error> {
        let slot = self.slot(after, limit);
        slot.get_or_try_init(|| async {
            let page = self
                .reader
                .read(after, &LogFilter::default(), limit)
                .await?;
            Ok(Arc::new(page))
        })
        .await
        .cloned()
    }

    fn slot(&self, after: LogCursor, limit: u32) -> Arc<OnceCell<Arc<Page>>> {
        let generation = self.waker.generation();
        let now = Instant::now();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.generation != generation {
            slots.generation = generation;
            slots.by_place.clear();
        }
        slots
            .by_place
            .retain(|_, (read_at, _)| now.duration_since(*read_at) < FRESH_FOR);
        let (_, cell) = slots
            .by_place
            .entry((after, limit))
            .or_insert_with(|| (now, Arc::default()));
        cell.clone()
    }
}
