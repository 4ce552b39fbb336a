//! A client that behaves as a careful caller of the API: it keeps one idempotency key per
//! command and sends it again after a transport failure or a retryable error, so a command
//! whose answer was lost in a crash is resolved instead of guessed.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::server::ADMIN_KEY;

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Acknowledged: the mutation's `data` field.
    Applied(Value),
    /// Refused with this stable error code (`extensions.code`).
    Refused(String),
}

/// Error codes after which the same command (and key) is sent again.
const RETRYABLE: [&str; 2] = ["UNAVAILABLE", "RATE_LIMITED"];

/// What one send came to.
enum Sent {
    Answered(Answer),
    /// A transport failure, a 5xx without GraphQL body, or a retryable code.
    Retry(String),
}

/// A GraphQL client of one server address, or of several in turn, as the admin.
#[derive(Clone)]
pub struct Client {
    urls: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(url: String) -> Self {
        Self::spread(vec![url])
    }

    /// A client that sends each command (and each resend) to the next of `urls`, as a
    /// round-robin load balancer in front of several instances would.
    pub fn spread(urls: Vec<String>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("http client");
        Self {
            urls: Arc::new(urls),
            next: Arc::default(),
            http,
        }
    }

    fn url(&self) -> &str {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.urls[turn % self.urls.len()]
    }

    /// Sends mutation `query` (whose field is `field`) with `variables` until it is answered
    /// for good, for at most `patience`: the answer (`None` if there was none) and why each
    /// earlier send had to be repeated.
    pub async fn command(
        &self,
        query: &str,
        field: &str,
        variables: &Value,
        patience: Duration,
    ) -> (Option<Answer>, Vec<String>) {
        let give_up = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(20);
        let mut resent_for = Vec::new();
        loop {
            match self.send(query, field, variables).await {
                Sent::Answered(answer) => return (Some(answer), resent_for),
                Sent::Retry(_) if tokio::time::Instant::now() >= give_up => {
                    return (None, resent_for)
                }
                Sent::Retry(reason) => {
                    resent_for.push(reason);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Sends once; the reason when the send must be retried.
    pub async fn send_once(
        &self,
        query: &str,
        field: &str,
        variables: &Value,
    ) -> Result<Answer, String> {
        match self.send(query, field, variables).await {
            Sent::Answered(answer) => Ok(answer),
            Sent::Retry(reason) => Err(reason),
        }
    }

    async fn send(&self, query: &str, field: &str, variables: &Value) -> Sent {
        let sent = self
            .http
            .post(self.url())
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => return Sent::Retry(format!("transport: {error}")),
        };
        let status = response.status();
        let Ok(body) = response.json::<Value>().await else {
            return Sent::Retry(format!("HTTP {status} without a GraphQL body"));
        };
        if let Some(error) = body["errors"].get(0) {
            let code = error["extensions"]["code"]
                .as_str()
                .unwrap_or("NONE")
                .to_owned();
            if RETRYABLE.contains(&code.as_str()) {
                return Sent::Retry(code);
            }
            return Sent::Answered(Answer::Refused(code));
        }
        match body["data"].get(field) {
            Some(data) if !data.is_null() => Sent::Answered(Answer::Applied(data.clone())),
            _ => Sent::Retry(format!("HTTP {status}: no data in {body}")),
        }
    }
}
