//! The Anthropic Message Batches API: requests go inline with the create call, results come
//! from the batch's `results_url`. Anthropic batches carry no metadata, so a batch created
//! just before a crash cannot be found again (`find_batch` answers `None`); the note in the
//! README says so.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chronicle_aggregates::Endpoint;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{
    http, BatchInput, LineResponse, Provider, ProviderBatch, ProviderError, ProviderStatus,
    RequestCounts, ResultLine,
};

const API_VERSION: &str = "2023-06-01";

/// Where and how to reach the Anthropic API.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// E.g. `https://api.anthropic.com`.
    pub base_url: String,
    /// Sent as `x-api-key`.
    pub api_key: SecretString,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

/// The Anthropic provider.
pub struct Anthropic {
    http: reqwest::Client,
    config: AnthropicConfig,
}

#[derive(Deserialize)]
struct Counts {
    processing: u64,
    succeeded: u64,
    errored: u64,
    canceled: u64,
    expired: u64,
}

#[derive(Deserialize)]
struct MessageBatch {
    id: String,
    processing_status: String,
    request_counts: Counts,
    results_url: Option<String>,
}

impl From<MessageBatch> for ProviderBatch {
    fn from(batch: MessageBatch) -> Self {
        let counts = &batch.request_counts;
        let answered = counts.succeeded + counts.errored;
        let status = match batch.processing_status.as_str() {
            "canceling" => ProviderStatus::Cancelling,
            "ended" if counts.canceled > 0 && answered == 0 => ProviderStatus::Cancelled,
            "ended" if counts.expired > 0 => ProviderStatus::Expired,
            "ended" => ProviderStatus::Completed,
            _ => ProviderStatus::InProgress,
        };
        Self {
            id: batch.id,
            status,
            input_file_id: "inline".into(),
            output_file_id: batch.results_url,
            error_file_id: None,
            request_counts: RequestCounts {
                total: counts.processing + answered + counts.canceled + counts.expired,
                completed: counts.succeeded,
                failed: counts.errored,
            },
            errors: None,
            metadata: HashMap::new(),
        }
    }
}

#[derive(Deserialize)]
struct Line {
    custom_id: String,
    result: LineResult,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum LineResult {
    Succeeded { message: Value },
    Errored { error: Value },
    Canceled,
    Expired,
}

impl From<Line> for ResultLine {
    fn from(line: Line) -> Self {
        let (response, error) = match line.result {
            LineResult::Succeeded { message } => (
                Some(LineResponse {
                    status_code: 200,
                    body: message,
                }),
                None,
            ),
            LineResult::Errored { error } => (None, Some(error)),
            // Unanswered: the driver expires these.
            LineResult::Canceled | LineResult::Expired => (None, None),
        };
        Self {
            custom_id: line.custom_id,
            response,
            error,
        }
    }
}

impl Anthropic {
    /// A client for `config`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS setup).
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let http = http::client(config.timeout)?;
        Ok(Self { http, config })
    }

    fn url(&self, path: &str) -> String {
        http::url(&self.config.base_url, path)
    }

    async fn call(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ProviderError> {
        let authorized = || {
            build()
                .header("x-api-key", self.config.api_key.expose_secret())
                .header("anthropic-version", API_VERSION)
        };
        http::send(authorized, self.config.max_retries).await
    }
}

/// Our JSONL lines (`custom_id`, `body`) as Message Batches requests (`custom_id`, `params`).
fn requests(jsonl: &[u8]) -> Result<Vec<Value>, ProviderError> {
    String::from_utf8_lossy(jsonl)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let request: Value = serde_json::from_str(line)
                .map_err(|e| ProviderError::Malformed(format!("input line: {e}")))?;
            Ok(json!({ "custom_id": request["custom_id"], "params": request["body"] }))
        })
        .collect()
}

#[async_trait]
impl Provider for Anthropic {
    fn name(&self) -> &'static str {
        "anthropic"
    }

    fn inline_input(&self) -> bool {
        true
    }

    async fn upload(&self, _jsonl: Bytes) -> Result<String, ProviderError> {
        Ok("inline".into())
    }

    async fn create_batch(
        &self,
        input: BatchInput<'_>,
        _endpoint: Endpoint,
        _batch_id: Uuid,
    ) -> Result<ProviderBatch, ProviderError> {
        let BatchInput::Inline(jsonl) = input else {
            return Err(ProviderError::Malformed(
                "Message Batches take their requests inline".into(),
            ));
        };
        let body = json!({ "requests": requests(&jsonl)? });
        let url = self.url("/messages/batches");
        let response = self.call(|| self.http.post(&url).json(&body)).await?;
        Ok(http::json::<MessageBatch>(response).await?.into())
    }

    async fn find_batch(&self, _batch_id: Uuid) -> Result<Option<ProviderBatch>, ProviderError> {
        Ok(None)
    }

    async fn batch(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError> {
        let url = self.url(&format!("/messages/batches/{provider_batch_id}"));
        let response = self.call(|| self.http.get(&url)).await?;
        Ok(http::json::<MessageBatch>(response).await?.into())
    }

    async fn cancel(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError> {
        let url = self.url(&format!("/messages/batches/{provider_batch_id}/cancel"));
        let response = self.call(|| self.http.post(&url)).await?;
        Ok(http::json::<MessageBatch>(response).await?.into())
    }

    async fn results(
        &self,
        results_url: &str,
    ) -> Result<BoxStream<'static, Result<ResultLine, ProviderError>>, ProviderError> {
        let response = self.call(|| self.http.get(results_url)).await?;
        Ok(http::lines(response)
            .and_then(|line| async move {
                serde_json::from_str::<Line>(&line)
                    .map(ResultLine::from)
                    .map_err(|e| ProviderError::Malformed(format!("results line: {e}")))
            })
            .boxed())
    }
}
