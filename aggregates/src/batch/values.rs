//! The value types a batch is made of.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::request::RequestSpec;
use crate::Endpoint;

/// One open batch exists per key at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchKey {
    /// The client whose requests these are.
    pub owner: String,
    /// The provider endpoint.
    pub endpoint: Endpoint,
    /// The model.
    pub model: String,
}

/// One request in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchEntry {
    /// The request's id.
    pub request_id: Uuid,
    /// The validated request.
    pub spec: RequestSpec,
}

/// When a building batch must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Most requests in one batch (the provider's limit is 50,000).
    pub max_requests: u64,
    /// Largest input file, in bytes (the provider's limit is 200 MB; we keep a margin).
    pub max_bytes: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_requests: 50_000,
            max_bytes: 190_000_000,
        }
    }
}

/// Why a batch stopped accepting requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The next request would exceed a limit.
    Full,
    /// Its oldest request waited the configured maximum.
    MaxWait,
    /// It was open for the maximum age (one hour).
    MaxAge,
    /// Its owner flushed it.
    Flushed,
}

impl CloseReason {
    /// The wire form, e.g. `max_wait`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::MaxWait => "max_wait",
            Self::MaxAge => "max_age",
            Self::Flushed => "flushed",
        }
    }
}
