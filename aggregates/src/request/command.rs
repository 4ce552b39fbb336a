//! What can be asked of a request. Times, ids and provider results arrive in the command.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{AttemptVerdict, Cost, DeliveryAttempt, RequestSpec};

/// A request's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestCommand {
    /// Accept a validated request into the batch `batch_id`.
    Submit {
        /// The new request's id (uuid v7).
        request_id: Uuid,
        /// The owning client.
        owner: String,
        /// The building batch it joins.
        batch_id: Uuid,
        /// The validated request.
        spec: RequestSpec,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Its batch was sent to the provider.
    MarkSentToProvider {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record the provider's response.
    RecordResult {
        /// The response body.
        response: Value,
        /// What it cost, when a price applied.
        cost: Option<Cost>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record the provider's error, or the failure of its batch.
    Fail {
        /// The error.
        error: Value,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The provider expired the batch before processing this request.
    Expire {
        /// Now.
        at: DateTime<Utc>,
    },
    /// The owner cancels the request (its batch must still be building).
    Cancel {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Start delivering the result: the first push, or a redelivery after the last round
    /// ended (delivered or failed).
    StartDelivery {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record a delivery attempt of the current round and what follows from it.
    RecordDeliveryAttempt {
        /// The attempt; its round and number must be the next ones.
        attempt: DeliveryAttempt,
        /// Delivered, retry later, or give up.
        verdict: AttemptVerdict,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Poll delivery: the owner acknowledges the result.
    Acknowledge {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Poll delivery: the owner reports it could not use the result.
    ReportConsumeFailure {
        /// What went wrong.
        reason: String,
        /// Now.
        at: DateTime<Utc>,
    },
}
