//! The OpenAI Files and Batch APIs over reqwest, with retries.
//!
//! Retries (exponential backoff with jitter, via `backon`) cover connection errors, timeouts,
//! 408, 429 and 5xx, honouring `Retry-After`; other 4xx answers are final. The API key is a
//! `SecretString`: never logged, never in `Debug` output.

use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use chronicle_aggregates::Endpoint;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::io::StreamReader;
use uuid::Uuid;

use super::{Provider, ProviderBatch, ProviderError, ResultLine, BATCH_METADATA_KEY};

/// Longest results line accepted (one response body).
const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Batches scanned when looking for the one created for a Chronicle batch.
const FIND_PAGES: usize = 10;

/// Where and how to reach an OpenAI-compatible API.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// E.g. `https://api.openai.com` (no trailing `/v1`).
    pub base_url: String,
    /// Sent as a bearer token.
    pub api_key: SecretString,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
    /// Timeout of one HTTP attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
}

/// The OpenAI provider.
pub struct OpenAi {
    http: reqwest::Client,
    config: OpenAiConfig,
}

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

#[derive(Deserialize)]
struct FileObject {
    id: String,
}

#[derive(Deserialize)]
struct BatchList {
    data: Vec<ProviderBatch>,
    has_more: bool,
    last_id: Option<String>,
}

impl OpenAi {
    /// A client for `config`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS setup).
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(Self { http, config })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        let mut request = request.bearer_auth(self.config.api_key.expose_secret());
        if let Some(organization) = &self.config.organization {
            request = request.header("OpenAI-Organization", organization);
        }
        if let Some(project) = &self.config.project {
            request = request.header("OpenAI-Project", project);
        }
        request
    }

    /// Sends the request `build` makes, retrying what is worth retrying.
    async fn call(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ProviderError> {
        let attempt = || async { classify(self.authorized(build()).send().await).await };
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.config.max_retries);
        attempt
            .retry(backoff)
            .when(|failure| matches!(failure, Attempt::Retryable { .. }))
            .adjust(|failure, delay| match failure {
                Attempt::Retryable {
                    retry_after: Some(wait),
                    ..
                } => delay.map(|_| *wait),
                Attempt::Retryable { .. } | Attempt::Final(_) => delay,
            })
            .notify(|failure, delay| {
                tracing::warn!(error = ?failure, retry_in = ?delay, "provider call failed; retrying");
            })
            .await
            .map_err(Attempt::into_error)
    }

    async fn json<T: for<'de> Deserialize<'de>>(response: Response) -> Result<T, ProviderError> {
        response
            .json()
            .await
            .map_err(|e| ProviderError::Malformed(e.to_string()))
    }
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
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .map(Duration::from_secs);
    let body: Value = response.json().await.unwrap_or_default();
    let message = body["error"]["message"]
        .as_str()
        .unwrap_or("no message")
        .to_owned();
    let retryable = status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error();
    if retryable {
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

#[async_trait]
impl Provider for OpenAi {
    async fn upload(&self, jsonl: Bytes) -> Result<String, ProviderError> {
        let response = self
            .call(|| {
                let file = reqwest::multipart::Part::stream(jsonl.clone())
                    .file_name("batch-input.jsonl")
                    .mime_str("application/jsonl")
                    .unwrap_or_else(|_| reqwest::multipart::Part::bytes(jsonl.to_vec()));
                let form = reqwest::multipart::Form::new()
                    .text("purpose", "batch")
                    .part("file", file);
                self.http.post(self.url("/files")).multipart(form)
            })
            .await?;
        Ok(Self::json::<FileObject>(response).await?.id)
    }

    async fn create_batch(
        &self,
        input_file_id: &str,
        endpoint: Endpoint,
        batch_id: Uuid,
    ) -> Result<ProviderBatch, ProviderError> {
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": endpoint.path(),
            "completion_window": "24h",
            "metadata": { BATCH_METADATA_KEY: batch_id.to_string() },
        });
        let response = self
            .call(|| self.http.post(self.url("/batches")).json(&body))
            .await?;
        Self::json(response).await
    }

    async fn find_batch(&self, batch_id: Uuid) -> Result<Option<ProviderBatch>, ProviderError> {
        let wanted = batch_id.to_string();
        let mut after: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let response = self
                .call(|| {
                    let mut query = vec![("limit", "100".to_owned())];
                    if let Some(after) = &after {
                        query.push(("after", after.clone()));
                    }
                    self.http.get(self.url("/batches")).query(&query)
                })
                .await?;
            let page: BatchList = Self::json(response).await?;
            if let Some(found) = page
                .data
                .into_iter()
                .find(|b| b.metadata.get(BATCH_METADATA_KEY) == Some(&wanted))
            {
                return Ok(Some(found));
            }
            if !page.has_more {
                return Ok(None);
            }
            after = page.last_id;
        }
        Ok(None)
    }

    async fn batch(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError> {
        let url = self.url(&format!("/batches/{provider_batch_id}"));
        let response = self.call(|| self.http.get(&url)).await?;
        Self::json(response).await
    }

    async fn cancel(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError> {
        let url = self.url(&format!("/batches/{provider_batch_id}/cancel"));
        let response = self.call(|| self.http.post(&url)).await?;
        Self::json(response).await
    }

    async fn results(
        &self,
        file_id: &str,
    ) -> Result<BoxStream<'static, Result<ResultLine, ProviderError>>, ProviderError> {
        let url = self.url(&format!("/files/{file_id}/content"));
        let response = self.call(|| self.http.get(&url)).await?;
        let bytes = response
            .bytes_stream()
            .map_err(|e| std::io::Error::other(e.to_string()));
        let lines = FramedRead::new(
            StreamReader::new(bytes),
            LinesCodec::new_with_max_length(MAX_LINE_BYTES),
        );
        Ok(lines
            .map_err(|e| ProviderError::Unavailable(format!("reading results: {e}")))
            .try_filter(|line| futures::future::ready(!line.trim().is_empty()))
            .and_then(|line| async move {
                serde_json::from_str::<ResultLine>(&line)
                    .map_err(|e| ProviderError::Malformed(format!("results line: {e}")))
            })
            .boxed())
    }
}
