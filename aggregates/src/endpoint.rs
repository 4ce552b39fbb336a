//! The provider endpoints a request may target, as they appear in a batch's JSONL `url`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A supported provider endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Endpoint {
    /// `/v1/chat/completions`
    #[serde(rename = "/v1/chat/completions")]
    ChatCompletions,
    /// `/v1/embeddings`
    #[serde(rename = "/v1/embeddings")]
    Embeddings,
    /// `/v1/responses`
    #[serde(rename = "/v1/responses")]
    Responses,
    /// `/v1/completions`
    #[serde(rename = "/v1/completions")]
    Completions,
    /// `/v1/messages` (Anthropic Messages; the body is the Messages API's params).
    #[serde(rename = "/v1/messages")]
    Messages,
}

impl Endpoint {
    /// Every supported endpoint.
    pub const ALL: [Self; 5] = [
        Self::ChatCompletions,
        Self::Embeddings,
        Self::Responses,
        Self::Completions,
        Self::Messages,
    ];

    /// The endpoint's URL path.
    pub const fn path(self) -> &'static str {
        match self {
            Self::ChatCompletions => "/v1/chat/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::Responses => "/v1/responses",
            Self::Completions => "/v1/completions",
            Self::Messages => "/v1/messages",
        }
    }

    /// The endpoint with this URL path, if supported.
    pub fn parse(path: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|endpoint| endpoint.path() == path)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.path())
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    #[test]
    fn every_endpoint_parses_back_from_its_path_and_serializes_as_it() {
        for endpoint in Endpoint::ALL {
            assert_eq!(Endpoint::parse(endpoint.path()), Some(endpoint));
            let json = serde_json::to_value(endpoint).unwrap();
            assert_eq!(json, endpoint.path());
        }
        assert_eq!(Endpoint::parse("/v1/images/generations"), None);
    }
}
