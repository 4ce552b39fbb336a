//! Webhook delivery: one signed `POST` per attempt, redirects not followed.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use uuid::Uuid;

use super::outcome::SendOutcome;
use super::signature::{sign, SIGNATURE_HEADER};
use crate::retry_rules;

/// Posts envelopes to receivers.
pub struct WebhookSender {
    client: reqwest::Client,
    timeout: Duration,
}

/// One webhook call.
pub struct WebhookCall<'a> {
    /// The receiver.
    pub url: &'a str,
    /// The envelope's bytes.
    pub body: &'a [u8],
    /// The round's delivery id (sent as `Idempotency-Key` and `Chronicle-Delivery-Id`).
    pub delivery_id: Uuid,
    /// The attempt number.
    pub attempt: u32,
    /// The owner's signing secret.
    pub secret: &'a str,
}

impl WebhookSender {
    /// A sender whose calls time out after `timeout`.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS set-up).
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, timeout })
    }

    /// Sends one attempt and sorts the answer.
    pub async fn send(&self, call: WebhookCall<'_>) -> SendOutcome {
        let signature = sign(call.secret, Utc::now().timestamp(), call.body);
        let sent = self
            .client
            .post(call.url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("chronicle/", env!("CARGO_PKG_VERSION")))
            .header("Idempotency-Key", call.delivery_id.to_string())
            .header("Chronicle-Delivery-Id", call.delivery_id.to_string())
            .header("Chronicle-Delivery-Attempt", call.attempt.to_string())
            .header(SIGNATURE_HEADER, signature)
            .body(call.body.to_vec())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                return SendOutcome::Transient {
                    status_code: None,
                    error: format!("no answer within {} ms", self.timeout.as_millis()),
                    retry_after: None,
                }
            }
            Err(error) => {
                return SendOutcome::Transient {
                    status_code: None,
                    error: format!("could not reach the receiver: {}", root_cause(&error)),
                    retry_after: None,
                }
            }
        };
        let status = response.status();
        let status_code = Some(status.as_u16());
        if status.is_success() {
            SendOutcome::Accepted { status_code }
        } else if retry_rules::retryable_status(status) {
            SendOutcome::Transient {
                status_code,
                error: format!("HTTP {status}"),
                retry_after: retry_rules::retry_after(response.headers()),
            }
        } else {
            SendOutcome::Rejected {
                status_code,
                error: format!("HTTP {status}"),
            }
        }
    }
}

/// The innermost error's message (reqwest's own says only "error sending request").
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}
