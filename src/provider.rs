//! LLM batch providers: the provider-neutral contract the driver uses, the OpenAI Batch API
//! client, and an emulator of that API for tests and demos.

mod anthropic;
mod chat;
mod emulator;
mod http;
mod openai;

use std::collections::HashMap;

use async_trait::async_trait;
use bytes::Bytes;
use chronicle_aggregates::Endpoint;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use anthropic::{Anthropic, AnthropicConfig};
pub use chat::{ChatAnswer, ChatClient, ChatConfig, ChatFailure};
pub use emulator::{Emulator, Faults};
pub use openai::{OpenAi, OpenAiConfig};

/// The metadata key that ties a provider batch to its Chronicle batch.
pub const BATCH_METADATA_KEY: &str = "chronicle_batch_id";

/// A provider batch's status, as the provider names it (read in any case, with or without
/// underscores: OpenAI writes `in_progress`, Azure's REST examples `InProgress`, `Completed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderStatus {
    /// Checking the input file.
    Validating,
    /// Running.
    InProgress,
    /// Writing results.
    Finalizing,
    /// Done; results are in the output and error files.
    Completed,
    /// The input was rejected.
    Failed,
    /// The completion window ran out; some requests may have results.
    Expired,
    /// A cancel was asked for.
    Cancelling,
    /// Cancelled.
    Cancelled,
}

impl ProviderStatus {
    const ALL: [Self; 8] = [
        Self::Validating,
        Self::InProgress,
        Self::Finalizing,
        Self::Completed,
        Self::Failed,
        Self::Expired,
        Self::Cancelling,
        Self::Cancelled,
    ];

    /// The status named `name`, ignoring case and underscores.
    fn parse(name: &str) -> Option<Self> {
        let folded = |text: &str| -> String {
            text.chars()
                .filter(|c| *c != '_')
                .map(|c| c.to_ascii_lowercase())
                .collect()
        };
        let wanted = folded(name);
        Self::ALL.into_iter().find(|status| {
            serde_json::to_value(status)
                .ok()
                .and_then(|value| value.as_str().map(folded))
                .is_some_and(|candidate| candidate == wanted)
        })
    }
}

impl<'de> Deserialize<'de> for ProviderStatus {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown batch status `{name}`")))
    }
}

/// A batch's metadata: `null` (as Azure lists other clients' batches) reads as none, and
/// values that are not strings are skipped.
fn metadata_or_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<HashMap<String, String>, D::Error> {
    let value = Option::<HashMap<String, Value>>::deserialize(deserializer)?;
    Ok(value
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| Some((key, value.as_str()?.to_owned())))
        .collect())
}

/// How many requests a provider batch holds and how they fared.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct RequestCounts {
    /// All requests.
    pub total: u64,
    /// Requests with a response.
    pub completed: u64,
    /// Requests with an error.
    pub failed: u64,
}

/// A provider batch.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ProviderBatch {
    /// The provider's id.
    pub id: String,
    /// Where it stands.
    pub status: ProviderStatus,
    /// The uploaded input file.
    pub input_file_id: String,
    /// The results of successful requests.
    pub output_file_id: Option<String>,
    /// The errors of failed requests.
    pub error_file_id: Option<String>,
    /// Counts so far.
    #[serde(default)]
    pub request_counts: RequestCounts,
    /// Why it failed, when it did.
    pub errors: Option<Value>,
    /// What we attached on creation.
    #[serde(default, deserialize_with = "metadata_or_none")]
    pub metadata: HashMap<String, String>,
}

/// One line of a results file: a request's response or error, by custom id.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ResultLine {
    /// The client's custom id.
    pub custom_id: String,
    /// The HTTP response the provider got for the request.
    pub response: Option<LineResponse>,
    /// The error, when the request failed.
    pub error: Option<Value>,
}

/// The provider's response to one request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LineResponse {
    /// The HTTP status of the request.
    pub status_code: u16,
    /// The response body.
    pub body: Value,
}

/// Why a provider call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the call (a 4xx other than 408/429): retrying will not help.
    #[error("the provider refused the call ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider stayed unreachable, overloaded or failing through every retry.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we cannot read.
    #[error("unreadable provider response: {0}")]
    Malformed(String),
}

/// What a provider batch is created from.
#[derive(Debug, Clone)]
pub enum BatchInput<'a> {
    /// A file uploaded before (OpenAI).
    File(&'a str),
    /// The JSONL itself, sent with the create call (providers without file uploads).
    Inline(Bytes),
}

/// A batch provider (OpenAI Batch API and compatible ones, Anthropic Message Batches).
#[async_trait]
pub trait Provider: Send + Sync {
    /// The provider's name in the price table: `openai`, `azure` or `anthropic`.
    fn name(&self) -> &'static str;

    /// True when batches are created from the requests themselves, not from an upload.
    fn inline_input(&self) -> bool {
        false
    }

    /// Uploads a JSONL input file; returns its file id.
    async fn upload(&self, jsonl: Bytes) -> Result<String, ProviderError>;

    /// Creates a batch over an uploaded file or inline input, tagged with the Chronicle
    /// batch id where the provider keeps metadata.
    async fn create_batch(
        &self,
        input: BatchInput<'_>,
        endpoint: Endpoint,
        batch_id: Uuid,
    ) -> Result<ProviderBatch, ProviderError>;

    /// The provider batch already created for a Chronicle batch, if any (crash recovery).
    async fn find_batch(&self, batch_id: Uuid) -> Result<Option<ProviderBatch>, ProviderError>;

    /// A provider batch's current state.
    async fn batch(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError>;

    /// Asks the provider to cancel a batch.
    async fn cancel(&self, provider_batch_id: &str) -> Result<ProviderBatch, ProviderError>;

    /// The lines of a results file, parsed as they stream in.
    async fn results(
        &self,
        file_id: &str,
    ) -> Result<BoxStream<'static, Result<ResultLine, ProviderError>>, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_in_openais_and_azures_spellings() {
        for (name, status) in [
            ("in_progress", ProviderStatus::InProgress),
            ("InProgress", ProviderStatus::InProgress),
            ("Completed", ProviderStatus::Completed),
            ("Validating", ProviderStatus::Validating),
            ("cancelling", ProviderStatus::Cancelling),
        ] {
            let read: ProviderStatus =
                serde_json::from_value(Value::from(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(read, status, "{name}");
        }
        assert!(serde_json::from_value::<ProviderStatus>(Value::from("paused")).is_err());
    }

    #[test]
    fn null_metadata_reads_as_none() {
        let batch = serde_json::json!({
            "id": "b", "status": "completed", "input_file_id": "f",
            "output_file_id": null, "error_file_id": null, "errors": null, "metadata": null,
        });
        let read: ProviderBatch = serde_json::from_value(batch).unwrap_or_else(|e| panic!("{e}"));
        assert!(read.metadata.is_empty());
    }
}
