//! Why a batch refused a command.

use super::BatchStatus;
use crate::{DomainError, ErrorCode};

/// A batch's rejection of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The batch does not exist.
    #[error("batch not found")]
    NotFound,
    /// Requests were sent to a batch of another owner, endpoint or model.
    #[error("the batch belongs to another owner, endpoint or model")]
    KeyMismatch,
    /// Only a building batch accepts requests.
    #[error("the batch is {}, not building", status.as_str())]
    NotBuilding {
        /// Where the batch stands.
        status: BatchStatus,
    },
    /// The transition table forbids this move.
    #[error("a {} batch cannot become {}", from.as_str(), to.as_str())]
    InvalidTransition {
        /// Where the batch stands.
        from: BatchStatus,
        /// Where the command would take it.
        to: BatchStatus,
    },
    /// Provider progress applies while the provider is processing the batch.
    #[error("the batch is {}, not at the provider", status.as_str())]
    NotAtProvider {
        /// Where the batch stands.
        status: BatchStatus,
    },
    /// Only a cancelled batch that reached the provider, once, asks the provider to cancel.
    #[error("no provider batch to cancel")]
    NoProviderCancel,
    /// The request was withdrawn already.
    #[error("the request was cancelled already")]
    AlreadyWithdrawn,
    /// An empty batch has nothing to send.
    #[error("an empty batch cannot be closed")]
    Empty,
    /// Adding nothing is a mistake in the caller.
    #[error("no requests to add")]
    NoEntries,
    /// Custom ids must be unique within a batch (this error names those repeated within one
    /// add; the store's unique index refuses ids already in the batch).
    #[error("custom ids already in the batch: {}", ids.join(", "))]
    DuplicateCustomIds {
        /// The repeated custom ids.
        ids: Vec<String>,
    },
    /// The requests do not fit; this much room is left.
    #[error("the batch has room for {requests} more requests and {bytes} more bytes")]
    WouldOverflow {
        /// Requests that still fit.
        requests: u64,
        /// Bytes that still fit.
        bytes: u64,
    },
}

impl DomainError for BatchError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::NotBuilding { .. }
            | Self::NotAtProvider { .. }
            | Self::InvalidTransition { .. }
            | Self::NoProviderCancel
            | Self::AlreadyWithdrawn
            | Self::Empty => ErrorCode::InvalidTransition,
            Self::KeyMismatch
            | Self::NoEntries
            | Self::DuplicateCustomIds { .. }
            | Self::WouldOverflow { .. } => ErrorCode::Validation,
        }
    }
}
