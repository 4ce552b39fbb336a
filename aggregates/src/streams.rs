//! Streams that one aggregate's events start: the command that appends those events writes
//! each started stream's first event in the same transaction (a batch's submission starts
//! the streams of the requests it accepted), so no log consumer has to derive them later.

use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;

/// The first event of a stream that another aggregate's events start.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedStream {
    /// The started aggregate's type.
    pub aggregate_type: &'static str,
    /// The started aggregate's id.
    pub aggregate_id: String,
    /// Its first event's type.
    pub event_type: String,
    /// Its first event's version.
    pub event_version: String,
    /// Its first event, serialized.
    pub payload: Value,
}

impl StartedStream {
    /// Stream `aggregate_id` of `B`, started by `event`.
    ///
    /// # Errors
    /// The event does not serialize.
    pub fn new<B: Aggregate>(
        aggregate_id: String,
        event: &B::Event,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            aggregate_type: B::TYPE,
            aggregate_id,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event)?,
        })
    }
}

/// An aggregate whose events may start other aggregates' streams (none by default).
pub trait StartsStreams: Aggregate {
    /// The streams `events`, just decided by this aggregate (which has applied them), start.
    ///
    /// # Errors
    /// An event does not serialize.
    fn started_streams(
        &self,
        _aggregate_id: &str,
        _events: &[Self::Event],
    ) -> Result<Vec<StartedStream>, serde_json::Error> {
        Ok(Vec::new())
    }
}
