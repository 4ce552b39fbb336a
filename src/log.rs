//! The gap-free global log: the one way every consumer (projectors, process managers,
//! subscriptions, exports) reads events across aggregates.

mod reader;
mod shared;
mod tail;
mod waker;

pub use reader::{LogFilter, LogReader, Page, MAX_PAGE_BYTES};
pub use shared::SharedPages;
pub use tail::tail;
pub use waker::{LogWaker, Waiter};
