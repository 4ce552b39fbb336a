//! The OpenAI Files and Batch APIs over reqwest, with retries (see `http.rs`). The API key is
//! a `SecretString`: never logged, never in `Debug` output.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chronicle_aggregates::Endpoint;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use reqwest::{RequestBuilder, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::{
    http, BatchInput, Provider, ProviderBatch, ProviderError, ResultLine, BATCH_METADATA_KEY,
};

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
    /// Azure OpenAI instead of OpenAI: its `api-version`.
    pub azure_api_version: Option<String>,
}

/// The OpenAI provider (also Azure OpenAI: `/openai/...` paths with `api-version`, the
/// `api-key` header, and endpoint paths without `/v1` in the batch and its input lines).
pub struct OpenAi {
    http: reqwest::Client,
    config: OpenAiConfig,
}

#[derive(Deserialize)]
struct FileObject {
    id: String,
}

/// A page of the batch list. Entries stay JSON until one is ours: the list holds every
/// client's batches, and one we cannot read must not hide ours.
#[derive(Deserialize)]
struct BatchList {
    data: Vec<serde_json::Value>,
    has_more: bool,
    last_id: Option<String>,
}

impl OpenAi {
    /// A client for `config`.
    ///
    /// # Errors
    /// The HTTP client cannot be built (TLS setup).
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let http = http::client(config.timeout)?;
        Ok(Self { http, config })
    }

    fn url(&self, path: &str) -> String {
        match &self.config.azure_api_version {
            None => http::url(&self.config.base_url, path),
            Some(_) => format!(
                "{}/openai{path}",
                self.config.base_url.trim_end_matches('/')
            ),
        }
    }

    /// An endpoint path as this flavour names it (`/chat/completions` on Azure).
    fn endpoint_path<'p>(&self, path: &'p str) -> &'p str {
        match self.config.azure_api_version {
            None => path,
            Some(_) => path.strip_prefix("/v1").unwrap_or(path),
        }
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        let key = self.config.api_key.expose_secret();
        let mut request = match &self.config.azure_api_version {
            None => request.bearer_auth(key),
            Some(version) => request
                .header("api-key", key)
                .query(&[("api-version", version)]),
        };
        if let Some(organization) = &self.config.organization {
            request = request.header("OpenAI-Organization", organization);
        }
        if let Some(project) = &self.config.project {
            request = request.header("OpenAI-Project", project);
        }
        request
    }

    /// Input lines with Azure's endpoint paths.
    fn azure_lines(&self, jsonl: &[u8]) -> Result<Bytes, ProviderError> {
        let mut out = String::with_capacity(jsonl.len());
        for line in String::from_utf8_lossy(jsonl)
            .lines()
            .filter(|l| !l.trim().is_empty())
        {
            let mut request: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| ProviderError::Malformed(format!("input line: {e}")))?;
            if let Some(url) = request["url"].as_str().map(str::to_owned) {
                request["url"] = self.endpoint_path(&url).into();
            }
            out.push_str(&request.to_string());
            out.push('\n');
        }
        Ok(Bytes::from(out))
    }

    /// Sends the request `build` makes, authorized, with retries.
    async fn call(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ProviderError> {
        http::send(|| self.authorized(build()), self.config.max_retries).await
    }
}

#[async_trait]
impl Provider for OpenAi {
    fn name(&self) -> &'static str {
        match self.config.azure_api_version {
            Some(_) => "azure",
            None => "openai",
        }
    }

    async fn upload(&self, jsonl: Bytes) -> Result<String, ProviderError> {
        let jsonl = if self.config.azure_api_version.is_some() {
            self.azure_lines(&jsonl)?
        } else {
            jsonl
        };
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
        Ok(http::json::<FileObject>(response).await?.id)
    }

    async fn create_batch(
        &self,
        input: BatchInput<'_>,
        endpoint: Endpoint,
        batch_id: Uuid,
    ) -> Result<ProviderBatch, ProviderError> {
        let BatchInput::File(input_file_id) = input else {
            return Err(ProviderError::Malformed(
                "the OpenAI Batch API creates batches from uploaded files".into(),
            ));
        };
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": self.endpoint_path(endpoint.path()),
            "completion_window": "24h",
            "metadata": { BATCH_METADATA_KEY: batch_id.to_string() },
        });
        // Not retried: a create that timed out may have succeeded, and a retry would make a
        // second batch. The driver's next round finds it by metadata instead.
        let url = self.url("/batches");
        let response = http::send(|| self.authorized(self.http.post(&url).json(&body)), 0).await?;
        http::json(response).await
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
            let page: BatchList = http::json(response).await?;
            if let Some(found) = page
                .data
                .into_iter()
                .find(|b| b["metadata"][BATCH_METADATA_KEY].as_str() == Some(wanted.as_str()))
            {
                let found = serde_json::from_value(found)
                    .map_err(|e| ProviderError::Malformed(format!("batch {wanted}: {e}")))?;
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
        http::json(response).await
    }

    async fn cancel(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError> {
        let url = self.url(&format!("/batches/{provider_batch_id}/cancel"));
        let response = self.call(|| self.http.post(&url)).await?;
        http::json(response).await
    }

    async fn results(
        &self,
        file_id: &str,
    ) -> Result<BoxStream<'static, Result<ResultLine, ProviderError>>, ProviderError> {
        let url = self.url(&format!("/files/{file_id}/content"));
        let response = self.call(|| self.http.get(&url)).await?;
        Ok(http::lines(response)
            .and_then(|line| async move {
                serde_json::from_str::<ResultLine>(&line)
                    .map_err(|e| ProviderError::Malformed(format!("results line: {e}")))
            })
            .boxed())
    }
}
