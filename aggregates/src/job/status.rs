//! A transfer job's and its tasks' states, their transition tables, and the rule that
//! derives a job's status from its tasks.

use serde::{Deserialize, Serialize};

/// Where one task (one study) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for the runner.
    Pending,
    /// Being moved.
    InProgress,
    /// Every instance arrived.
    Success,
    /// Moved, with something to note (e.g. a requested series was missing).
    Warning,
    /// Not moved: the reason is in the task's message.
    Failure,
    /// Canceled before it finished.
    Canceled,
}

impl TaskStatus {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Pending,
        Self::InProgress,
        Self::Success,
        Self::Warning,
        Self::Failure,
        Self::Canceled,
    ];

    /// The task transition table.
    ///
    /// A running task returns to pending when it is retried after a transient failure or
    /// requeued after an interruption; a finished task returns to pending when its job is
    /// resumed (canceled), retried (failure) or restarted (any).
    pub const fn can_transition_to(self, to: Self) -> bool {
        use TaskStatus::{Canceled, Failure, InProgress, Pending, Success, Warning};
        matches!(
            (self, to),
            (Pending, InProgress | Canceled)
                | (InProgress, Pending | Success | Warning | Failure | Canceled)
                | (Success | Warning | Failure | Canceled, Pending)
        )
    }

    /// True once the task has run to an end.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Warning | Self::Failure | Self::Canceled
        )
    }

    /// The wire form, e.g. `in_progress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Failure => "failure",
            Self::Canceled => "canceled",
        }
    }
}

/// Where a transfer job stands: derived from its tasks (see [`JobStatus::derive`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created by an owner who is not trusted: waits for an admin's verify.
    Unverified,
    /// Verified; no task has run yet.
    Pending,
    /// A task runs, or some have finished while others wait.
    InProgress,
    /// Every task succeeded.
    Success,
    /// Finished with warnings (or some tasks canceled beside successes).
    Warning,
    /// Finished, at least one task failed.
    Failure,
    /// Cancel requested while tasks still run.
    Canceling,
    /// Canceled: nothing runs; `resume` takes it back.
    Canceled,
}

impl JobStatus {
    /// Every status.
    pub const ALL: [Self; 8] = [
        Self::Unverified,
        Self::Pending,
        Self::InProgress,
        Self::Success,
        Self::Warning,
        Self::Failure,
        Self::Canceling,
        Self::Canceled,
    ];

    /// The job transition table: every change [`JobStatus::derive`] may make after a command.
    ///
    /// Finished jobs go back to work through retry (failure), resume (canceled: back to where
    /// its tasks stand) or restart (any finished job); a canceling job only finishes
    /// canceling.
    pub const fn can_transition_to(self, to: Self) -> bool {
        use JobStatus::{
            Canceled, Canceling, Failure, InProgress, Pending, Success, Unverified, Warning,
        };
        matches!(
            (self, to),
            (Unverified, Pending | Canceled)
                | (Pending, InProgress | Canceled)
                | (
                    InProgress,
                    Pending | Success | Warning | Failure | Canceling | Canceled
                )
                | (Canceling, Canceled)
                | (Success | Warning, Pending)
                | (Failure, Pending | InProgress)
                | (
                    Canceled,
                    Unverified | Pending | InProgress | Success | Warning | Failure
                )
        )
    }

    /// True when no task runs and none will without a command.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Warning | Self::Failure | Self::Canceled
        )
    }

    /// The job's status, derived from its tasks after every task change.
    ///
    /// In order, the first rule that matches:
    /// 1. not verified → `unverified` (`canceled` once cancel is requested: nothing ran);
    /// 2. no tasks → `success`;
    /// 3. cancel requested: a task still running → `canceling`, else → `canceled`;
    /// 4. a task running → `in_progress`;
    /// 5. a task pending: none finished yet → `pending`, else → `in_progress` (a job that has
    ///    started stays in progress between its tasks rather than flickering back);
    /// 6. every task finished: any failure → `failure`; all success → `success`; all
    ///    canceled → `canceled`; otherwise (success with warning or canceled, or warning
    ///    only) → `warning`.
    pub fn derive(
        verified: bool,
        cancel_requested: bool,
        tasks: impl IntoIterator<Item = TaskStatus>,
    ) -> Self {
        if !verified {
            return if cancel_requested {
                Self::Canceled
            } else {
                Self::Unverified
            };
        }
        let mut seen = [false; TaskStatus::ALL.len()];
        for task in tasks {
            seen[task as usize] = true;
        }
        let has = |status: TaskStatus| seen[status as usize];
        let finished = TaskStatus::ALL
            .into_iter()
            .filter(|s| s.is_finished())
            .any(has);
        if !seen.contains(&true) {
            Self::Success
        } else if cancel_requested {
            if has(TaskStatus::InProgress) {
                Self::Canceling
            } else {
                Self::Canceled
            }
        } else if has(TaskStatus::InProgress) || (has(TaskStatus::Pending) && finished) {
            Self::InProgress
        } else if has(TaskStatus::Pending) {
            Self::Pending
        } else if has(TaskStatus::Failure) {
            Self::Failure
        } else if !has(TaskStatus::Warning) && !has(TaskStatus::Canceled) {
            Self::Success
        } else if !has(TaskStatus::Warning) && !has(TaskStatus::Success) {
            Self::Canceled
        } else {
            Self::Warning
        }
    }

    /// The wire form, e.g. `in_progress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unverified => "unverified",
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Failure => "failure",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
        }
    }
}

/// How a task ended, as the runner reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    /// Every instance arrived.
    Success,
    /// Moved, with a note.
    Warning,
    /// Not moved, for a reason retrying will not fix.
    Failure,
    /// Stopped because the job is canceling.
    Canceled,
}

/// Why finished tasks go back to pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Requeue {
    /// The owner resumed a canceled job: its canceled tasks.
    Resume,
    /// The owner retried the failed tasks.
    RetryFailed,
    /// An admin restarted every task.
    Restart,
}
