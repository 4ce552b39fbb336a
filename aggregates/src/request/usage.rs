//! What a provider's response says it used, and what that cost.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tokens a response used, as its `usage` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Prompt tokens, those read from the provider's prompt cache included.
    pub input: u64,
    /// Prompt tokens read from the prompt cache (billed at the cached price).
    pub cached_input: u64,
    /// Completion tokens.
    pub output: u64,
}

impl TokenUsage {
    /// The usage `response` reports, zero where it reports none. OpenAI's Chat Completions
    /// and Embeddings count `prompt_tokens` with the cached ones inside
    /// (`prompt_tokens_details.cached_tokens`), its Responses API `input_tokens` likewise
    /// (`input_tokens_details.cached_tokens`); Anthropic counts cache reads and writes beside
    /// `input_tokens` (`cache_read_input_tokens`, `cache_creation_input_tokens`).
    pub fn of(response: &Value) -> Self {
        let usage = &response["usage"];
        let count = |value: &Value| value.as_u64().unwrap_or_default();
        if usage.get("prompt_tokens").is_some() {
            return Self {
                input: count(&usage["prompt_tokens"]),
                cached_input: count(&usage["prompt_tokens_details"]["cached_tokens"]),
                output: count(&usage["completion_tokens"]),
            };
        }
        let cache_read = count(&usage["cache_read_input_tokens"]);
        let cache_write = count(&usage["cache_creation_input_tokens"]);
        let cached_input = count(&usage["input_tokens_details"]["cached_tokens"]) + cache_read;
        Self {
            input: count(&usage["input_tokens"]) + cache_read + cache_write,
            cached_input,
            output: count(&usage["output_tokens"]),
        }
    }
}

/// What a result cost, priced with the price table when it was recorded: the event keeps
/// it, so history keeps the price that applied and a rebuild reproduces it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cost {
    /// Billionths of a US dollar, rounded to the nearest.
    pub nano_usd: i64,
    /// The price it was computed with: `provider/model@from`.
    pub price: String,
}

/// What results used and cost, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Prompt tokens.
    pub input: u64,
    /// Prompt tokens read from the prompt cache.
    pub cached_input: u64,
    /// Completion tokens.
    pub output: u64,
    /// What the priced results cost, in billionths of a US dollar.
    pub nano_usd: i64,
    /// Results no price applied to.
    pub unpriced: u64,
}

impl Spent {
    /// Adds a result: its `response`'s usage and its `cost`, if it was priced.
    pub fn add(&mut self, response: &Value, cost: Option<&Cost>) {
        let usage = TokenUsage::of(response);
        self.input = self.input.saturating_add(usage.input);
        self.cached_input = self.cached_input.saturating_add(usage.cached_input);
        self.output = self.output.saturating_add(usage.output);
        match cost {
            Some(cost) => self.nano_usd = self.nano_usd.saturating_add(cost.nano_usd),
            None => self.unpriced += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn each_providers_usage_reads_as_prompt_cached_and_completion_tokens() {
        let chat = json!({ "usage": { "prompt_tokens": 10, "completion_tokens": 4,
            "prompt_tokens_details": { "cached_tokens": 6 } } });
        let responses = json!({ "usage": { "input_tokens": 10, "output_tokens": 4,
            "input_tokens_details": { "cached_tokens": 6 } } });
        let anthropic = json!({ "usage": { "input_tokens": 1, "output_tokens": 4,
            "cache_read_input_tokens": 6, "cache_creation_input_tokens": 3 } });
        let embeddings = json!({ "usage": { "prompt_tokens": 3, "total_tokens": 3 } });
        let expected = TokenUsage {
            input: 10,
            cached_input: 6,
            output: 4,
        };
        assert_eq!(TokenUsage::of(&chat), expected);
        assert_eq!(TokenUsage::of(&responses), expected);
        assert_eq!(TokenUsage::of(&anthropic), expected);
        assert_eq!(
            TokenUsage::of(&embeddings),
            TokenUsage {
                input: 3,
                cached_input: 0,
                output: 0
            }
        );
        assert_eq!(
            TokenUsage::of(&json!({ "id": "no usage" })),
            TokenUsage::default()
        );
    }
}
