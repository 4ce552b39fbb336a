//! Chronicle's domain: the aggregates whose state transitions are the event log.
//!
//! Pure code: commands in, events out, no IO. Time, ids and provider results arrive inside
//! commands, so `handle` is deterministic and replays are exact. Each aggregate is one module
//! with its commands, versioned events, explicit transition table, error enum and tests.
#![warn(missing_docs)]

pub mod batch;
pub mod client;
mod delivery;
pub mod dicom_server;
mod endpoint;
mod error_code;
pub mod job;
pub mod query;
pub mod request;
pub mod simulation;
mod streams;
pub mod subject;
pub mod transfer;
mod upcasting;

pub use delivery::Delivery;
pub use endpoint::Endpoint;
pub use error_code::{DomainError, ErrorCode};
pub use streams::{Effects, Settled, Settlement, StreamEvent};
pub use upcasting::{Upcast, Upcasters};
