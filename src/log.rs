//! The gap-free global log: the one way every consumer (projectors, process managers,
//! subscriptions, exports) reads events across aggregates.

mod live;
mod reader;
mod shared;
mod waker;

pub use live::{CommittedFeed, Committing, LiveLog};
pub use reader::{EventFacts, LogFilter, LogReader, Page, MAX_PAGE_BYTES};
pub use shared::SharedPages;
pub use waker::{next_due, LogWaker, Notified, Waiter};
