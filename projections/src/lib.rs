//! Chronicle's read side: the shape of an event as the global log delivers it, the projector
//! contract, checkpoints, and the read models themselves. SQL only; no HTTP, no GraphQL.
//!
//! A projector applies a page of events inside the transaction that also advances its
//! checkpoint (see [`checkpoint`]), so each event takes effect exactly once.
#![warn(missing_docs)]

pub mod aggregate_index;
pub mod analytics;
pub mod batches;
pub mod checkpoint;
pub mod clients;
mod cursor;
pub mod delivery_attempts;
mod event;
mod jobs;
mod listing;
pub mod parked;
mod projector;
pub mod queries;
pub mod rebuilds;
pub mod request_moves;
pub mod requests;
pub mod simulations;
pub mod transfers;
pub mod transitions;

pub use cursor::{ClientCursor, CursorError, LogCursor};
pub use event::{EventMetadata, RecordedEvent};
pub use projector::{type_list, FailurePolicy, ProjectionError, Projector};
