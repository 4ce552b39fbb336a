//! A validated request: what a client submits, checked once, before anything is written.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::{Delivery, Endpoint};

/// Longest accepted custom id, in characters.
pub const MAX_CUSTOM_ID_CHARS: usize = 64;
/// Largest accepted body, in bytes of compact JSON.
pub const MAX_BODY_BYTES: usize = 1_000_000;

/// A request that passed every submission rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestSpec {
    /// The client's own id for matching results; unique within its batch.
    pub custom_id: String,
    /// The provider endpoint.
    pub endpoint: Endpoint,
    /// The model, e.g. `gpt-4o-mini`.
    pub model: String,
    /// The request body sent to the provider (a JSON object).
    pub body: Value,
    /// How the result is delivered.
    pub delivery: Delivery,
}

impl RequestSpec {
    /// Checks every submission rule and returns all broken ones.
    ///
    /// # Errors
    /// One message per broken rule.
    pub fn parse(
        custom_id: String,
        endpoint: &str,
        model: String,
        body: Value,
        delivery: Result<Delivery, String>,
    ) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let custom_chars = custom_id.chars().count();
        if custom_chars == 0 || custom_chars > MAX_CUSTOM_ID_CHARS {
            problems.push(format!(
                "custom id must be 1 to {MAX_CUSTOM_ID_CHARS} characters"
            ));
        }
        let endpoint = Endpoint::parse(endpoint);
        // Anthropic refuses a whole batch over one custom id outside [A-Za-z0-9_-].
        let anthropic_id = |id: &str| {
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if endpoint == Some(Endpoint::Messages) && !anthropic_id(&custom_id) {
            problems.push("custom id for /v1/messages may hold only A-Z, a-z, 0-9, _ and -".into());
        }
        if endpoint.is_none() {
            let supported: Vec<&str> = Endpoint::ALL.iter().map(|e| e.path()).collect();
            problems.push(format!("endpoint must be one of {}", supported.join(", ")));
        }
        if model.trim().is_empty() {
            problems.push("model must not be empty".into());
        }
        match &body {
            Value::Object(fields) => match fields.get("model") {
                None => {}
                Some(Value::String(body_model)) if *body_model == model => {}
                Some(_) => problems.push(format!("body.model must equal the model `{model}`")),
            },
            Value::Null
            | Value::Bool(_)
            | Value::Number(_)
            | Value::String(_)
            | Value::Array(_) => {
                problems.push("body must be a JSON object".into());
            }
        }
        let compact = body.to_string();
        if compact.len() > MAX_BODY_BYTES {
            problems.push(format!("body must be at most {MAX_BODY_BYTES} bytes"));
        }
        // PostgreSQL text and jsonb cannot hold NUL characters.
        if custom_id.contains('\0') || model.contains('\0') || compact.contains("\\u0000") {
            problems.push("text must not contain NUL characters".into());
        }
        if let Err(problem) = &delivery {
            problems.push(problem.clone());
        }
        match (endpoint, delivery) {
            (Some(endpoint), Ok(delivery)) if problems.is_empty() => Ok(Self {
                custom_id,
                endpoint,
                model,
                body,
                delivery,
            }),
            _ => Err(problems),
        }
    }

    /// The request's line in the batch input file (JSONL), as uploaded to the provider. The
    /// body gets the request's `model` when it has none: providers reject a whole batch file
    /// over one line without it.
    pub fn jsonl_line(&self) -> String {
        let mut body = self.body.clone();
        if let Some(fields) = body.as_object_mut() {
            fields
                .entry("model")
                .or_insert_with(|| Value::String(self.model.clone()));
        }
        json!({
            "custom_id": self.custom_id,
            "method": "POST",
            "url": self.endpoint.path(),
            "body": body,
        })
        .to_string()
    }

    /// Bytes the request adds to its batch's input file, newline included.
    pub fn jsonl_bytes(&self) -> u64 {
        u64::try_from(self.jsonl_line().len() + 1).unwrap_or(u64::MAX)
    }
}
