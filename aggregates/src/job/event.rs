//! What happened to a job. Event types and versions are a contract: never rename
//! them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{JobKind, JobStatus, Requeue, TaskStatus};

/// A job's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum JobEvent<K: JobKind> {
    /// The job was created with its tasks (numbered from 1), all pending.
    Created {
        /// The job's id.
        job_id: Uuid,
        /// The owning client.
        owner: String,
        /// The set-up.
        spec: K::Spec,
        /// False when it waits for an admin's verify.
        verified: bool,
        /// When.
        at: DateTime<Utc>,
    },
    /// An admin verified it.
    Verified {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The runner started a task.
    TaskStarted {
        /// The task.
        task: u32,
        /// Which attempt this is, from 1.
        attempt: u32,
        /// Which run of the task this is, from 1: every start counts, so a late report of
        /// an earlier run is told apart.
        run: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// Progress: what the task counted so far.
    TaskProgressed {
        /// The task.
        task: u32,
        /// Instances stored so far.
        count: u32,
        /// When.
        at: DateTime<Utc>,
    },
    /// A task ended (success, warning, failure or canceled).
    TaskFinished {
        /// The task.
        task: u32,
        /// How it ended.
        status: TaskStatus,
        /// What to tell the owner.
        message: Option<String>,
        /// What it counted: instances stored, studies found.
        count: u32,
        /// What else it reported (none when the job ended it: a cancel, a last failure).
        output: Option<K::Output>,
        /// When.
        at: DateTime<Utc>,
    },
    /// A transient failure: the task waits for another attempt.
    TaskRetryScheduled {
        /// The task.
        task: u32,
        /// The attempt that failed.
        attempt: u32,
        /// The error.
        reason: String,
        /// Not to be run again before.
        retry_at: DateTime<Utc>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The task's run was cut off; it waits again without spending an attempt.
    TaskInterrupted {
        /// The task.
        task: u32,
        /// Why.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The owner canceled: these pending tasks were canceled at once; running ones follow.
    CancelRequested {
        /// The tasks canceled at once.
        canceled: Vec<u32>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Finished tasks wait again.
    TasksRequeued {
        /// The tasks.
        tasks: Vec<u32>,
        /// Why.
        reason: Requeue,
        /// Who asked.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The job's derived status changed.
    StatusChanged {
        /// Where it stood.
        from: JobStatus,
        /// Where it stands.
        to: JobStatus,
        /// When.
        at: DateTime<Utc>,
    },
}

impl<K: JobKind> JobEvent<K> {
    /// When it happened.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Created { at, .. }
            | Self::Verified { at, .. }
            | Self::TaskStarted { at, .. }
            | Self::TaskProgressed { at, .. }
            | Self::TaskFinished { at, .. }
            | Self::TaskRetryScheduled { at, .. }
            | Self::TaskInterrupted { at, .. }
            | Self::CancelRequested { at, .. }
            | Self::TasksRequeued { at, .. }
            | Self::StatusChanged { at, .. } => *at,
        }
    }
}

impl<K: JobKind> DomainEvent for JobEvent<K> {
    fn event_type(&self) -> String {
        let suffix = match self {
            Self::Created { .. } => "JobCreated",
            Self::Verified { .. } => "JobVerified",
            Self::TaskStarted { .. } => "TaskStarted",
            Self::TaskProgressed { .. } => "TaskProgressed",
            Self::TaskFinished { .. } => "TaskFinished",
            Self::TaskRetryScheduled { .. } => "TaskRetryScheduled",
            Self::TaskInterrupted { .. } => "TaskInterrupted",
            Self::CancelRequested { .. } => "JobCancelRequested",
            Self::TasksRequeued { .. } => "TasksRequeued",
            Self::StatusChanged { .. } => "JobStatusChanged",
        };
        format!("{}{suffix}", K::NAME)
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}
