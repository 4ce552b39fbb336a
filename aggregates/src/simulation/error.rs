//! Why a simulation refused a command.

use super::{AiService, SimulationStatus};
use crate::{DomainError, ErrorCode};

/// A simulation's rejection of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimulationError {
    /// The simulation does not exist.
    #[error("simulation not found")]
    NotFound,
    /// A simulation is created once.
    #[error("the simulation already exists")]
    AlreadyCreated,
    /// The transition table forbids this move.
    #[error("a {} simulation cannot become {}", from.as_str(), to.as_str())]
    InvalidTransition {
        /// Where it stands.
        from: SimulationStatus,
        /// Where the command would take it.
        to: SimulationStatus,
    },
    /// Messages are taken only while the session runs.
    #[error("a {} simulation takes no messages", status.as_str())]
    NotTakingMessages {
        /// Where it stands.
        status: SimulationStatus,
    },
    /// The patient is still answering: post after the reply arrives.
    #[error("the patient is still replying; post again once the reply is in")]
    ReplyPending,
    /// The time limit has passed.
    #[error("the simulation's time limit has passed")]
    TimeUp,
    /// The message is empty, too long, or holds a NUL.
    #[error("a message must be 1 to {max} characters without NUL")]
    InvalidMessage {
        /// The longest accepted.
        max: usize,
    },
    /// The answer is for no call this simulation is waiting for.
    #[error("no AI call {call_id} is pending")]
    UnknownCall {
        /// The call.
        call_id: uuid::Uuid,
    },
    /// The output does not fit the call's service.
    #[error("the output does not fit a {} call", service.as_str())]
    WrongOutput {
        /// The call's service.
        service: AiService,
    },
    /// The set-up breaks rules.
    #[error("invalid simulation: {}", problems.join("; "))]
    InvalidSpec {
        /// Each broken rule.
        problems: Vec<String>,
    },
    /// Only a failed simulation has a call to retry.
    #[error("there is no failed AI call to retry")]
    NothingToRetry,
}

impl DomainError for SimulationError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::ReplyPending | Self::UnknownCall { .. } => ErrorCode::Conflict,
            Self::InvalidMessage { .. } | Self::WrongOutput { .. } | Self::InvalidSpec { .. } => {
                ErrorCode::Validation
            }
            Self::AlreadyCreated
            | Self::InvalidTransition { .. }
            | Self::NotTakingMessages { .. }
            | Self::TimeUp
            | Self::NothingToRetry => ErrorCode::InvalidTransition,
        }
    }
}
