//! Why a job refused a command.

use super::{JobStatus, TaskStatus};
use crate::{DomainError, ErrorCode};

/// A job's rejection of a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job does not exist.
    #[error("job not found")]
    NotFound,
    /// A job is created once.
    #[error("the job already exists")]
    AlreadyCreated,
    /// The set-up breaks rules.
    #[error("invalid job: {}", problems.join("; "))]
    InvalidSpec {
        /// Each broken rule.
        problems: Vec<String>,
    },
    /// No such task in this job.
    #[error("the job has no task {task}")]
    NoSuchTask {
        /// The task number.
        task: u32,
    },
    /// The job's state does not allow the command.
    #[error("a {} job cannot {action}", status.as_str())]
    JobRefuses {
        /// Where the job stands.
        status: JobStatus,
        /// What was asked.
        action: &'static str,
    },
    /// The task's state does not allow the command.
    #[error("task {task} is {}: it cannot become {}", from.as_str(), to.as_str())]
    InvalidTaskTransition {
        /// The task.
        task: u32,
        /// Where it stands.
        from: TaskStatus,
        /// Where the command would take it.
        to: TaskStatus,
    },
    /// The derived job status would break the job transition table.
    #[error("a {} job cannot become {}", from.as_str(), to.as_str())]
    InvalidTransition {
        /// Where the job stands.
        from: JobStatus,
        /// Where the command would take it.
        to: JobStatus,
    },
    /// A report from a run that is no longer the task's latest.
    #[error("run {run} of task {task} is no longer its latest")]
    StaleRun {
        /// The task.
        task: u32,
        /// The run that reported.
        run: u32,
    },
    /// The task waits for its retry time.
    #[error("task {task} is not retried before {due}")]
    RetryNotDue {
        /// The task.
        task: u32,
        /// When it may start.
        due: chrono::DateTime<chrono::Utc>,
    },
    /// A task message is too long or holds control characters other than newlines.
    #[error("a task message must be at most {max} characters")]
    InvalidMessage {
        /// The longest accepted.
        max: usize,
    },
}

impl DomainError for JobError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound | Self::NoSuchTask { .. } => ErrorCode::NotFound,
            Self::StaleRun { .. } => ErrorCode::Conflict,
            Self::InvalidSpec { .. } | Self::InvalidMessage { .. } => ErrorCode::Validation,
            Self::AlreadyCreated
            | Self::JobRefuses { .. }
            | Self::InvalidTaskTransition { .. }
            | Self::RetryNotDue { .. }
            | Self::InvalidTransition { .. } => ErrorCode::InvalidTransition,
        }
    }
}
