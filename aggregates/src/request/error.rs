//! Why a request refused a command.

use super::RequestStatus;
use crate::{DomainError, ErrorCode};

/// A request's rejection of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request does not exist.
    #[error("request not found")]
    NotFound,
    /// A request can be submitted once.
    #[error("the request was already submitted")]
    AlreadySubmitted,
    /// The transition table forbids this move.
    #[error("a {} request cannot become {}", from.as_str(), to.as_str())]
    InvalidTransition {
        /// Where the request stands.
        from: RequestStatus,
        /// Where the command would take it.
        to: RequestStatus,
    },
    /// Acknowledging applies to poll delivery only.
    #[error("the request's result is pushed to its receiver, not polled")]
    NotPolled,
    /// Attempts are recorded only while the request is delivering.
    #[error("a {} request is not being delivered", status.as_str())]
    NotDelivering {
        /// Where the request stands.
        status: RequestStatus,
    },
    /// The attempt is not the next one of the current round (recorded twice, or stale).
    #[error("expected attempt {expected_number} of round {expected_round}")]
    UnexpectedAttempt {
        /// The current round.
        expected_round: u32,
        /// The next attempt number.
        expected_number: u32,
    },
    /// Pushing applies to webhook and RabbitMQ delivery only.
    #[error("the request's result is polled by its owner, not pushed")]
    Polled,
}

impl DomainError for RequestError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::AlreadySubmitted
            | Self::InvalidTransition { .. }
            | Self::NotPolled
            | Self::Polled
            | Self::NotDelivering { .. } => ErrorCode::InvalidTransition,
            Self::UnexpectedAttempt { .. } => ErrorCode::Conflict,
        }
    }
}
