//! A request: one LLM call, from submission through the provider to its delivery.
//!
//! A request is submitted into a building batch (`pending`), travels with its batch to the
//! provider (`provider_processing`), gets its result (`provider_processed`) or an error
//! (`failed`), or expires with its batch (`expired`). Results are pushed (`delivering` →
//! `delivered`, or `delivery_failed` and redelivered) or, with poll delivery, fetched by the
//! owner, who acknowledges them (`consumed`) or reports a failure (`consume_failed`). A pushed
//! result may be delivered again (a new round) after its last round ended. An owner may cancel
//! a request while it is pending. [`RequestStatus::can_transition_to`] is the table.

mod command;
mod delivery;
mod error;
mod event;
mod spec;
mod status;
#[cfg(test)]
mod tests;
mod usage;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use command::RequestCommand;
pub use delivery::{delivery_id, AttemptVerdict, DeliveryAttempt, DeliveryProgress};
pub use error::RequestError;
pub use event::RequestEvent;
pub use spec::{RequestSpec, MAX_BODY_BYTES, MAX_CUSTOM_ID_CHARS};
pub use status::RequestStatus;
pub use usage::{Cost, Spent, TokenUsage};

use crate::Upcast;

/// A request's state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    submission: Option<Submission>,
    status: Option<RequestStatus>,
    response: Option<Value>,
    error: Option<Value>,
    updated_at: Option<DateTime<Utc>>,
    #[serde(default)]
    delivery: DeliveryProgress,
}

/// What was submitted, by whom, into which batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Submission {
    /// The request's id.
    pub request_id: Uuid,
    /// The owning client.
    pub owner: String,
    /// The batch it joined.
    pub batch_id: Uuid,
    /// The validated request.
    pub spec: RequestSpec,
    /// When it was accepted.
    pub submitted_at: DateTime<Utc>,
}

impl Request {
    /// The status, `None` before submission.
    pub fn status(&self) -> Option<RequestStatus> {
        self.status
    }

    /// What was submitted, `None` before submission.
    pub fn submission(&self) -> Option<&Submission> {
        self.submission.as_ref()
    }

    /// The provider's response, once recorded.
    pub fn response(&self) -> Option<&Value> {
        self.response.as_ref()
    }

    /// The provider's error, once recorded.
    pub fn error(&self) -> Option<&Value> {
        self.error.as_ref()
    }

    /// Where the current delivery round stands.
    pub fn delivery(&self) -> &DeliveryProgress {
        &self.delivery
    }

    fn decide(&self, command: RequestCommand) -> Result<Vec<RequestEvent>, RequestError> {
        let event = match command {
            RequestCommand::Submit {
                request_id,
                owner,
                batch_id,
                spec,
                at,
            } => {
                if self.submission.is_some() {
                    return Err(RequestError::AlreadySubmitted);
                }
                return Ok(vec![RequestEvent::Submitted {
                    request_id,
                    owner,
                    batch_id,
                    spec,
                    at,
                }]);
            }
            RequestCommand::RecordDeliveryAttempt {
                attempt,
                verdict,
                at,
            } => return self.record_attempt(attempt, verdict, at),
            RequestCommand::MarkSentToProvider { at } => RequestEvent::SentToProvider { at },
            RequestCommand::RecordResult { response, cost, at } => {
                RequestEvent::ResultRecorded { response, cost, at }
            }
            RequestCommand::Fail { error, at } => RequestEvent::Failed { error, at },
            RequestCommand::Expire { at } => RequestEvent::Expired { at },
            RequestCommand::Cancel { at } => RequestEvent::Cancelled { at },
            RequestCommand::StartDelivery { at } => RequestEvent::DeliveryStarted { at },
            RequestCommand::Acknowledge { at } => RequestEvent::Consumed { at },
            RequestCommand::ReportConsumeFailure { reason, at } => {
                RequestEvent::ConsumeFailed { reason, at }
            }
        };
        self.check(event.status())?;
        Ok(vec![event])
    }

    /// Checks a move to `to` against the table and the request's delivery mode.
    fn check(&self, to: RequestStatus) -> Result<(), RequestError> {
        let (Some(from), Some(submission)) = (self.status, &self.submission) else {
            return Err(RequestError::NotFound);
        };
        if !from.can_transition_to(to) {
            return Err(RequestError::InvalidTransition { from, to });
        }
        let polled = submission.spec.delivery.is_poll();
        match to {
            RequestStatus::Delivering if polled => Err(RequestError::Polled),
            RequestStatus::Consumed | RequestStatus::ConsumeFailed if !polled => {
                Err(RequestError::NotPolled)
            }
            RequestStatus::Pending
            | RequestStatus::ProviderProcessing
            | RequestStatus::ProviderProcessed
            | RequestStatus::Delivering
            | RequestStatus::Delivered
            | RequestStatus::Failed
            | RequestStatus::DeliveryFailed
            | RequestStatus::Expired
            | RequestStatus::Cancelled
            | RequestStatus::Consumed
            | RequestStatus::ConsumeFailed => Ok(()),
        }
    }

    /// An attempt of the current round, and the round's end when the verdict ends it.
    fn record_attempt(
        &self,
        attempt: DeliveryAttempt,
        verdict: AttemptVerdict,
        at: DateTime<Utc>,
    ) -> Result<Vec<RequestEvent>, RequestError> {
        let status = self.status.ok_or(RequestError::NotFound)?;
        if status != RequestStatus::Delivering {
            return Err(RequestError::NotDelivering { status });
        }
        let expected_number = self.delivery.attempts + 1;
        if attempt.round != self.delivery.round || attempt.number != expected_number {
            return Err(RequestError::UnexpectedAttempt {
                expected_round: self.delivery.round,
                expected_number,
            });
        }
        let (retry_at, end) = match verdict {
            AttemptVerdict::Delivered => (None, Some(RequestEvent::Delivered { at })),
            AttemptVerdict::RetryAt(retry_at) => (Some(retry_at), None),
            AttemptVerdict::GiveUp { reason } => {
                (None, Some(RequestEvent::DeliveryFailed { reason, at }))
            }
        };
        let attempted = RequestEvent::DeliveryAttempted {
            attempt,
            retry_at,
            at,
        };
        Ok(std::iter::once(attempted).chain(end).collect())
    }
}

impl Aggregate for Request {
    const TYPE: &'static str = "Request";
    type Command = RequestCommand;
    type Event = RequestEvent;
    type Error = RequestError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.status = Some(event.status());
        self.updated_at = Some(event.at());
        match event {
            RequestEvent::Submitted {
                request_id,
                owner,
                batch_id,
                spec,
                at,
            } => {
                self.submission = Some(Submission {
                    request_id,
                    owner,
                    batch_id,
                    spec,
                    submitted_at: at,
                });
            }
            RequestEvent::ResultRecorded { response, .. } => self.response = Some(response),
            RequestEvent::Failed { error, .. } => self.error = Some(error),
            RequestEvent::DeliveryStarted { at } => {
                self.delivery = DeliveryProgress {
                    round: self.delivery.round + 1,
                    attempts: 0,
                    started_at: Some(at),
                    retry_at: None,
                };
            }
            RequestEvent::DeliveryAttempted {
                attempt, retry_at, ..
            } => {
                self.delivery.attempts = attempt.number;
                self.delivery.retry_at = retry_at;
            }
            RequestEvent::SentToProvider { .. }
            | RequestEvent::Expired { .. }
            | RequestEvent::Cancelled { .. }
            | RequestEvent::Delivered { .. }
            | RequestEvent::DeliveryFailed { .. }
            | RequestEvent::Consumed { .. }
            | RequestEvent::ConsumeFailed { .. } => {}
        }
    }
}

impl Upcast for Request {}

impl crate::Effects for Request {}
