//! What may be asked of a job. Times arrive in the command (`handle` is pure).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{JobKind, TaskOutcome};

/// A command to a job. Tasks are numbered from 1 in creation order.
#[derive(Debug, Clone, PartialEq)]
pub enum JobCommand<K: JobKind> {
    /// Creates the job; an untrusted owner's job waits for an admin's verify.
    Create {
        /// The job's id.
        job_id: Uuid,
        /// The owning client.
        owner: String,
        /// The set-up.
        spec: K::Spec,
        /// The owner is trusted: the job needs no verify.
        trusted: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin lets an unverified job run.
    Verify {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The runner takes a pending task.
    StartTask {
        /// The task.
        task: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The runner reports progress (instances moved so far).
    ReportProgress {
        /// The task.
        task: u32,
        /// The run reporting (from its start); `None` for a run nobody holds any more.
        run: Option<u32>,
        /// What it counted so far.
        count: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// The runner reports a task's end.
    FinishTask {
        /// The task.
        task: u32,
        /// The run reporting (from its start); `None` for a run nobody holds any more.
        run: Option<u32>,
        /// How it ended.
        outcome: TaskOutcome,
        /// What to tell the owner.
        message: Option<String>,
        /// What it counted: instances stored, studies found.
        count: u32,
        /// What else it reports.
        output: K::Output,
        /// When.
        at: DateTime<Utc>,
    },
    /// A transient failure: the task is retried while it has attempts left, else it fails.
    FailTransiently {
        /// The task.
        task: u32,
        /// The run reporting (from its start); `None` for a run nobody holds any more.
        run: Option<u32>,
        /// The error.
        reason: String,
        /// Not to be run again before (the runner's backoff).
        retry_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The task's run was cut off (the runner stopped or crashed): it waits again, without
    /// spending an attempt.
    InterruptTask {
        /// The task.
        task: u32,
        /// The run reporting (from its start); `None` for a run nobody holds any more.
        run: Option<u32>,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The owner cancels: pending tasks are canceled now, running ones by the runner.
    Cancel {
        /// When.
        at: DateTime<Utc>,
    },
    /// The owner resumes a canceled job: its canceled tasks wait again.
    Resume {
        /// When.
        at: DateTime<Utc>,
    },
    /// The owner retries the failed tasks of a finished job.
    RetryFailed {
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin runs every task of a finished job again.
    Restart {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}
