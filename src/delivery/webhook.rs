//! Webhook delivery: one signed `POST` per attempt, redirects not followed.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, USER_AGENT};
use uuid::Uuid;

use super::outcome::SendOutcome;
use super::signature::{sign, SIGNATURE_HEADER};
use crate::retry_rules;
use crate::security::{EgressPolicy, Refused};

/// Posts envelopes to receivers.
pub struct WebhookSender {
    client: reqwest::Client,
    timeout: Duration,
    egress: EgressPolicy,
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
    /// A sender whose calls time out after `timeout` and reach only what `egress` permits.
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS set-up).
    pub fn new(timeout: Duration, egress: EgressPolicy) -> Result<Self, reqwest::Error> {
        let client = egress.client_builder().timeout(timeout).build()?;
        Ok(Self {
            client,
            timeout,
            egress,
        })
    }

    /// Sends one attempt and sorts the answer. A target the egress policy refuses is rejected
    /// for good.
    pub async fn send(&self, call: WebhookCall<'_>) -> SendOutcome {
        if let Err(refused) = self.egress.check_literal(call.url) {
            return refused_target(&refused);
        }
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
                if let Some(refused) = refusal(&error) {
                    return refused_target(refused);
                }
                return SendOutcome::Transient {
                    status_code: None,
                    error: format!("could not reach the receiver: {}", root_cause(&error)),
                    retry_after: None,
                };
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

/// The egress policy's refusal somewhere in `error`'s causes.
fn refusal<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e Refused> {
    let mut current = Some(error);
    while let Some(cause) = current {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused);
        }
        current = cause.source();
    }
    None
}

fn refused_target(refused: &Refused) -> SendOutcome {
    SendOutcome::Rejected {
        status_code: None,
        error: format!("target refused: {refused}"),
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn send_to(url: &str) -> SendOutcome {
        let sender = WebhookSender::new(Duration::from_secs(2), EgressPolicy::default())
            .unwrap_or_else(|e| panic!("{e}"));
        sender
            .send(WebhookCall {
                url,
                body: b"{}",
                delivery_id: Uuid::now_v7(),
                attempt: 1,
                secret: "whsec_test",
            })
            .await
    }

    #[tokio::test]
    async fn refused_targets_fail_for_good_by_address_and_after_resolution() {
        // A receiver listens, but the policy (no allowed networks) never lets a call reach it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map_or(0, |a| a.port());
        for url in [
            format!("http://127.0.0.1:{port}/hook"),
            format!("http://localhost:{port}/hook"),
        ] {
            let outcome = send_to(&url).await;
            assert!(
                matches!(&outcome, SendOutcome::Rejected { error, .. } if error.contains("target refused")),
                "{url}: {outcome:?}"
            );
        }
    }
}
