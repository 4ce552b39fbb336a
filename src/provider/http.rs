//! What every provider client shares: sending with retries, reading JSON, and reading a
//! results file line by line as it downloads.
//!
//! Retries (exponential backoff with jitter, via `backon`) cover connection errors, timeouts,
//! 408, 429 and 5xx, honouring `Retry-After`; other 4xx answers are final.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;

use super::ProviderError;
use crate::retry_rules;

/// Longest wait a provider's `Retry-After` may impose between attempts.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Longest results line accepted (one response body).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;

/// One attempt's failure, before retries decide.
#[derive(Debug)]
enum Attempt {
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    Final(ProviderError),
}

impl Attempt {
    fn into_error(self) -> ProviderError {
        match self {
            Self::Retryable { reason, .. } => ProviderError::Unavailable(reason),
            Self::Final(error) => error,
        }
    }
}

/// An HTTP client whose every attempt times out after `timeout`.
pub(super) fn client(timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .map_err(|e| ProviderError::Unavailable(e.to_string()))
}

/// `base` (with or without a trailing slash) + `/v1` + `path`.
pub(super) fn url(base: &str, path: &str) -> String {
    format!("{}/v1{path}", base.trim_end_matches('/'))
}

/// Sends the request `build` makes, retrying what is worth retrying, at most `retries` times.
pub(super) async fn send(
    build: impl Fn() -> RequestBuilder,
    retries: usize,
) -> Result<Response, ProviderError> {
    let attempt = || async {
        let started = std::time::Instant::now();
        let classified = classify(build().send().await).await;
        let outcome = match &classified {
            Ok(_) => "ok",
            Err(Attempt::Retryable { .. }) => "transient",
            Err(Attempt::Final(_)) => "rejected",
        };
        crate::metrics::call("provider", outcome, started.elapsed());
        classified
    };
    let backoff = ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_max_times(retries);
    attempt
        .retry(backoff)
        .when(|failure| matches!(failure, Attempt::Retryable { .. }))
        .adjust(|failure, delay| match failure {
            Attempt::Retryable {
                retry_after: Some(wait),
                ..
            } => delay.map(|_| (*wait).min(MAX_RETRY_AFTER)),
            Attempt::Retryable { .. } | Attempt::Final(_) => delay,
        })
        .notify(|failure, delay| {
            tracing::warn!(error = ?failure, retry_in = ?delay, "provider call failed; retrying");
        })
        .await
        .map_err(Attempt::into_error)
}

/// Sorts a response (or transport failure) into success, retryable and final.
async fn classify(sent: Result<Response, reqwest::Error>) -> Result<Response, Attempt> {
    let response = sent.map_err(|error| Attempt::Retryable {
        reason: error.to_string(),
        retry_after: None,
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = retry_rules::retry_after(response.headers());
    let body: Value = response.json().await.unwrap_or_default();
    // OpenAI and Anthropic both put the message at error.message.
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    if retry_rules::retryable_status(status) {
        Err(Attempt::Retryable {
            reason: format!("{status}: {message}"),
            retry_after,
        })
    } else {
        Err(Attempt::Final(ProviderError::Rejected {
            status: status.as_u16(),
            message,
        }))
    }
}

/// The response body as `T`.
pub(super) async fn json<T: DeserializeOwned>(response: Response) -> Result<T, ProviderError> {
    response
        .json()
        .await
        .map_err(|e| ProviderError::Malformed(e.to_string()))
}

/// The non-empty lines of a response body, as they arrive.
pub(super) fn lines(response: Response) -> BoxStream<'static, Result<String, ProviderError>> {
    let bytes = response
        .bytes_stream()
        .map_err(|e| std::io::Error::other(e.to_string()));
    FramedRead::new(
        StreamReader::new(bytes),
        LinesCodec::new_with_max_length(MAX_LINE_BYTES),
    )
    .map_err(|e| ProviderError::Unavailable(format!("reading results: {e}")))
    .try_filter(|line| futures::future::ready(!line.trim().is_empty()))
    .boxed()
}
