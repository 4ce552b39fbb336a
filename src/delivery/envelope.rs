//! The JSON document every pushed result carries: the webhook body and the RabbitMQ message.

use chronicle_aggregates::request::Request;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

/// A request's result as its receiver gets it (documented in the README).
#[derive(Debug, Serialize)]
pub struct Envelope<'a> {
    /// Always `request.result`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The delivery round's id: the same on every attempt of the round; deduplicate on it.
    pub delivery_id: Uuid,
    /// The attempt within the round, from 1.
    pub attempt: u32,
    /// The request's id.
    pub request_id: Uuid,
    /// The owner's custom id.
    pub custom_id: &'a str,
    /// The batch that carried it.
    pub batch_id: Uuid,
    /// The endpoint path, e.g. `/v1/chat/completions`.
    pub endpoint: &'static str,
    /// The model.
    pub model: &'a str,
    /// The provider's response body (only processed results are pushed; a request the
    /// provider failed shows its error in the API instead).
    pub response: Option<&'a Value>,
    /// When the request was submitted.
    pub submitted_at: DateTime<Utc>,
}

impl<'a> Envelope<'a> {
    /// The envelope of attempt `attempt` of delivery `delivery_id` of a submitted request.
    pub fn of(request: &'a Request, delivery_id: Uuid, attempt: u32) -> Option<Self> {
        let submission = request.submission()?;
        Some(Self {
            kind: "request.result",
            delivery_id,
            attempt,
            request_id: submission.request_id,
            custom_id: &submission.spec.custom_id,
            batch_id: submission.batch_id,
            endpoint: submission.spec.endpoint.path(),
            model: &submission.spec.model,
            response: request.response(),
            submitted_at: submission.submitted_at,
        })
    }

    /// The JSON bytes sent.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
