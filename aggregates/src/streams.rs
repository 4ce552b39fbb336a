//! What one aggregate's events do to other streams, written by the same command in the same
//! transaction, so that no log consumer has to derive them later: a batch's submission starts
//! the streams of the requests it accepted, and its cancellation, failure or a withdrawal
//! settles the requests still waiting.

use chrono::{DateTime, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::request::{RequestEvent, RequestStatus};

/// An event for another aggregate's stream, at a known sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// The aggregate's type.
    pub aggregate_type: &'static str,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence in that stream.
    pub sequence: usize,
    /// The event's type.
    pub event_type: String,
    /// The event's version.
    pub event_version: String,
    /// The event, serialized.
    pub payload: Value,
}

impl StreamEvent {
    /// `event` at `sequence` of stream `aggregate_id` of `B`.
    ///
    /// # Errors
    /// The event does not serialize.
    pub fn new<B: Aggregate>(
        aggregate_id: String,
        sequence: usize,
        event: &B::Event,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            aggregate_type: B::TYPE,
            aggregate_id,
            sequence,
            event_type: event.event_type(),
            event_version: event.event_version(),
            payload: serde_json::to_value(event)?,
        })
    }
}

/// How a batch's outcome moves the requests still waiting in it. Which requests move is
/// decided when the command appends, on each request's current status and transition table.
#[derive(Debug, Clone, PartialEq)]
pub enum Settlement {
    /// The owner cancelled the batch: pending requests are cancelled, those already at the
    /// provider fail.
    BatchCancelled {
        /// The batch.
        batch_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The batch failed: its waiting requests fail with the batch's error.
    BatchFailed {
        /// The batch.
        batch_id: Uuid,
        /// The batch's error.
        error: Value,
        /// When.
        at: DateTime<Utc>,
    },
    /// The owner withdrew one request from its building batch: cancelled if still pending.
    Withdrawn {
        /// The request.
        request_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
}

/// The requests a [`Settlement`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Every request of this batch.
    Batch(Uuid),
    /// This one request.
    Request(Uuid),
}

impl Settlement {
    /// The requests it concerns.
    pub fn settled(&self) -> Settled {
        match self {
            Self::BatchCancelled { batch_id, .. } | Self::BatchFailed { batch_id, .. } => {
                Settled::Batch(*batch_id)
            }
            Self::Withdrawn { request_id, .. } => Settled::Request(*request_id),
        }
    }

    /// The event a request in status `from` takes, when its transition table allows it.
    pub fn event_for(&self, from: RequestStatus) -> Option<RequestEvent> {
        let event = match self {
            Self::BatchCancelled { at, .. } if from == RequestStatus::Pending => {
                RequestEvent::Cancelled { at: *at }
            }
            Self::BatchCancelled { at, .. } => RequestEvent::Failed {
                error: json!({ "message": "the batch was cancelled by its owner" }),
                at: *at,
            },
            Self::BatchFailed { error, at, .. } => RequestEvent::Failed {
                error: error.clone(),
                at: *at,
            },
            Self::Withdrawn { at, .. } if from == RequestStatus::Pending => {
                RequestEvent::Cancelled { at: *at }
            }
            Self::Withdrawn { .. } => return None,
        };
        from.can_transition_to(event.status()).then_some(event)
    }
}

/// What an aggregate's events do to other streams (nothing by default).
pub trait Effects: Aggregate {
    /// The first events of the streams `events`, just decided by this aggregate (which has
    /// applied them), start.
    ///
    /// # Errors
    /// An event does not serialize.
    fn started_streams(
        &self,
        _aggregate_id: &str,
        _events: &[Self::Event],
    ) -> Result<Vec<StreamEvent>, serde_json::Error> {
        Ok(Vec::new())
    }

    /// How `events` settle requests.
    fn settlements(&self, _events: &[Self::Event]) -> Vec<Settlement> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::UNIX_EPOCH
    }

    #[test]
    fn a_cancelled_batch_cancels_pending_requests_and_fails_those_at_the_provider() {
        let cancelled = Settlement::BatchCancelled {
            batch_id: Uuid::nil(),
            at: at(),
        };
        assert_eq!(
            cancelled.event_for(RequestStatus::Pending),
            Some(RequestEvent::Cancelled { at: at() })
        );
        assert!(matches!(
            cancelled.event_for(RequestStatus::ProviderProcessing),
            Some(RequestEvent::Failed { .. })
        ));
        assert_eq!(cancelled.event_for(RequestStatus::Delivered), None);
    }

    #[test]
    fn a_failed_batch_fails_its_waiting_requests_and_leaves_finished_ones() {
        let error = json!({ "message": "boom" });
        let failed = Settlement::BatchFailed {
            batch_id: Uuid::nil(),
            error: error.clone(),
            at: at(),
        };
        for from in [RequestStatus::Pending, RequestStatus::ProviderProcessing] {
            assert_eq!(
                failed.event_for(from),
                Some(RequestEvent::Failed {
                    error: error.clone(),
                    at: at()
                }),
                "{from:?}"
            );
        }
        assert_eq!(failed.event_for(RequestStatus::Cancelled), None);
        assert_eq!(failed.settled(), Settled::Batch(Uuid::nil()));
    }

    #[test]
    fn a_withdrawal_cancels_only_a_pending_request() {
        let request_id = Uuid::from_u128(1);
        let withdrawn = Settlement::Withdrawn {
            request_id,
            at: at(),
        };
        assert_eq!(
            withdrawn.event_for(RequestStatus::Pending),
            Some(RequestEvent::Cancelled { at: at() })
        );
        assert_eq!(withdrawn.event_for(RequestStatus::ProviderProcessing), None);
        assert_eq!(withdrawn.settled(), Settled::Request(request_id));
    }
}
