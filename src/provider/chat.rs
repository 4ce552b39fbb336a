//! An OpenAI-compatible Chat Completions client: one call, retried on connection errors,
//! timeouts, 408, 429 and 5xx (see `http`), with its attempts and time measured for audits.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use reqwest::RequestBuilder;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::Value;

use super::{http, ProviderError};

/// Where and how to call.
pub struct ChatConfig {
    /// E.g. `https://api.openai.com` (no trailing `/v1`).
    pub base_url: String,
    /// Sent as a bearer token.
    pub api_key: SecretString,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: usize,
}

/// A Chat Completions client.
pub struct ChatClient {
    client: reqwest::Client,
    config: ChatConfig,
}

/// A completion, with what it cost.
#[derive(Debug, Clone)]
pub struct ChatAnswer {
    /// The first choice's message content.
    pub content: String,
    /// Why generation stopped.
    pub finish_reason: String,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Attempts it took.
    pub attempts: u32,
    /// Time over all attempts, in milliseconds.
    pub latency_ms: u64,
}

/// A call that failed through every retry.
#[derive(Debug, Clone)]
pub struct ChatFailure {
    /// The last error.
    pub error: ProviderError,
    /// Attempts made.
    pub attempts: u32,
    /// Time over all attempts, in milliseconds.
    pub latency_ms: u64,
}

#[derive(Deserialize)]
struct Completion {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Usage,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize, Default)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

impl ChatClient {
    /// A client for `config`.
    ///
    /// # Errors
    /// The HTTP client could not be built.
    pub fn new(config: ChatConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            client: http::client(config.timeout)?,
            config,
        })
    }

    /// Sends `request` (a Chat Completions body) and reads the first choice.
    ///
    /// # Errors
    /// The provider refused, stayed unavailable through the retries, or answered without
    /// a message.
    pub async fn complete(&self, request: &Value) -> Result<ChatAnswer, ChatFailure> {
        let attempts = AtomicU32::new(0);
        let clock = Instant::now();
        let url = http::url(&self.config.base_url, "/chat/completions");
        let build = || -> RequestBuilder {
            attempts.fetch_add(1, Ordering::Relaxed);
            self.client
                .post(&url)
                .bearer_auth(self.config.api_key.expose_secret())
                .json(request)
        };
        let answered = match http::send(build, self.config.retries).await {
            Ok(response) => http::json::<Completion>(response).await,
            Err(error) => Err(error),
        };
        let attempts = attempts.load(Ordering::Relaxed);
        let latency_ms = u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX);
        let failure = |error| ChatFailure {
            error,
            attempts,
            latency_ms,
        };
        let completion = answered.map_err(failure)?;
        let Some(choice) = completion.choices.into_iter().next() else {
            return Err(failure(ProviderError::Malformed("no choices".into())));
        };
        Ok(ChatAnswer {
            content: choice.message.content.unwrap_or_default(),
            finish_reason: choice.finish_reason.unwrap_or_default(),
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
            attempts,
            latency_ms,
        })
    }
}
