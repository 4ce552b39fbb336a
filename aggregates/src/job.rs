//! A job of DICOM work, one task per study: the lifecycle transfer jobs and query jobs share.
//! [`JobKind`] says what a job is made of (its set-up and what a finished task reports);
//! everything else — states, commands, events, the status rule — is here once.
//!
//! An owner creates the job with its tasks; an untrusted owner's job waits for an admin's
//! verify. The runner starts pending tasks (urgent jobs first), reports progress, and finishes
//! each as success, warning, failure or canceled; a transient failure puts the task back to
//! pending while it has retries left ([`MAX_RETRIES`]), and an interrupted run (the runner
//! stopped) puts it back without spending one. Cancel cancels pending tasks at once and lets
//! running ones stop; resume, retry-failed and (admin) restart put finished tasks back.
//!
//! The job's status is never set by a command: it is derived from the tasks after every
//! change by [`JobStatus::derive`] (the rule is written there), and each change is recorded
//! as a `StatusChanged` event checked against [`JobStatus::can_transition_to`]. Each task's
//! change is checked against [`TaskStatus::can_transition_to`].

mod command;
mod error;
mod event;
mod status;
#[cfg(test)]
mod tests;

use std::fmt::Debug;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventUpcaster;
use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::JobCommand;
pub use error::JobError;
pub use event::JobEvent;
pub use status::{JobStatus, Requeue, TaskOutcome, TaskStatus};

use crate::Upcast;

/// What kind of job: its aggregate type, its set-up, and what a finished task reports.
pub trait JobKind:
    Debug + Clone + Default + PartialEq + Send + Sync + Serialize + DeserializeOwned + 'static
{
    /// The aggregate type, e.g. `TransferJob`.
    const TYPE: &'static str;
    /// The prefix of event types, e.g. `Transfer` in `TransferTaskStarted`.
    const NAME: &'static str;
    /// The set-up, tasks included.
    type Spec: Debug + Clone + PartialEq + Send + Sync + Serialize + DeserializeOwned;
    /// What a finished task reports beside its count (e.g. the studies a query found).
    type Output: Debug + Clone + PartialEq + Send + Sync + Serialize + DeserializeOwned;

    /// The set-up if it breaks no rule, else every broken rule.
    ///
    /// # Errors
    /// Each broken rule.
    fn validate(spec: Self::Spec) -> Result<Self::Spec, Vec<String>>;

    /// How many tasks the set-up holds.
    fn task_count(spec: &Self::Spec) -> usize;
}

/// How many times a task is retried after transient failures before it fails.
pub const MAX_RETRIES: u32 = 3;
/// The longest task message kept.
const MAX_MESSAGE_CHARS: usize = 2_000;

/// One task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskState {
    /// Where it stands.
    pub status: TaskStatus,
    /// Attempts started since it was last requeued by a command.
    pub attempts: u32,
    /// What the latest attempt counted (instances stored, studies found).
    pub count: u32,
    /// After a transient failure: not started again before.
    #[serde(default)]
    pub retry_at: Option<DateTime<Utc>>,
    /// Runs started so far (never reset): reports name the run they belong to.
    #[serde(default)]
    pub runs: u32,
}

/// A job's state, rebuilt from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Job<K: JobKind> {
    id: Option<Uuid>,
    owner: Option<String>,
    spec: Option<K::Spec>,
    verified: bool,
    cancel_requested: bool,
    status: Option<JobStatus>,
    tasks: Vec<TaskState>,
}

impl<K: JobKind> Default for Job<K> {
    fn default() -> Self {
        Self {
            id: None,
            owner: None,
            spec: None,
            verified: false,
            cancel_requested: false,
            status: None,
            tasks: Vec::new(),
        }
    }
}

impl<K: JobKind> Job<K> {
    /// The job's status, `None` before creation.
    pub fn status(&self) -> Option<JobStatus> {
        self.status
    }

    /// The owning client.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The set-up.
    pub fn spec(&self) -> Option<&K::Spec> {
        self.spec.as_ref()
    }

    /// The tasks' states, task 1 first.
    pub fn tasks(&self) -> &[TaskState] {
        &self.tasks
    }

    fn task(&self, task: u32) -> Result<TaskState, JobError> {
        usize::try_from(task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|index| self.tasks.get(index))
            .copied()
            .ok_or(JobError::NoSuchTask { task })
    }

    /// The numbers of the tasks in `status`.
    fn numbered(&self, status: TaskStatus) -> Vec<u32> {
        (1..)
            .zip(&self.tasks)
            .filter(|(_, state)| state.status == status)
            .map(|(n, _)| n)
            .collect()
    }

    /// The task's move to `to`, refused when the task table forbids it.
    fn moving(&self, task: u32, to: TaskStatus) -> Result<TaskState, JobError> {
        let state = self.task(task)?;
        if state.status.can_transition_to(to) {
            Ok(state)
        } else {
            Err(JobError::InvalidTaskTransition {
                task,
                from: state.status,
                to,
            })
        }
    }

    /// Refuses a report from a run that is not the task's latest (a runner that lost its
    /// role reporting late); `None` names whatever run there is.
    fn current(&self, task: u32, run: Option<u32>) -> Result<(), JobError> {
        match run {
            Some(run) if run != self.task(task)?.runs => Err(JobError::StaleRun { task, run }),
            Some(_) | None => Ok(()),
        }
    }

    /// The task, if it is running (a failure or interruption can only end a run).
    fn running(&self, task: u32) -> Result<TaskState, JobError> {
        let state = self.task(task)?;
        if state.status == TaskStatus::InProgress {
            Ok(state)
        } else {
            Err(JobError::InvalidTaskTransition {
                task,
                from: state.status,
                to: TaskStatus::Pending,
            })
        }
    }

    fn decide(&self, command: JobCommand<K>) -> Result<Vec<JobEvent<K>>, JobError> {
        if let JobCommand::Create {
            job_id,
            owner,
            spec,
            trusted,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(JobError::AlreadyCreated);
            }
            let spec = K::validate(spec).map_err(|problems| JobError::InvalidSpec { problems })?;
            return Ok(vec![JobEvent::Created {
                job_id,
                owner,
                spec,
                verified: trusted,
                at,
            }]);
        }
        let Some(status) = self.status else {
            return Err(JobError::NotFound);
        };
        let refuse = |action| Err(JobError::JobRefuses { status, action });
        let (events, at) = match command {
            JobCommand::Create { .. } => return Err(JobError::AlreadyCreated),
            JobCommand::Verify { by, at } => {
                if status != JobStatus::Unverified {
                    return refuse("be verified");
                }
                (vec![JobEvent::Verified { by, at }], at)
            }
            JobCommand::StartTask { task, at } => {
                if !matches!(status, JobStatus::Pending | JobStatus::InProgress) {
                    return refuse("start a task");
                }
                let state = self.moving(task, TaskStatus::InProgress)?;
                if let Some(due) = state.retry_at.filter(|due| at < *due) {
                    return Err(JobError::RetryNotDue { task, due });
                }
                let (attempt, run) = (state.attempts + 1, state.runs + 1);
                let started = JobEvent::TaskStarted {
                    task,
                    attempt,
                    run,
                    at,
                };
                (vec![started], at)
            }
            JobCommand::ReportProgress {
                task,
                run,
                count,
                at,
            } => {
                let state = self.task(task)?;
                self.current(task, run)?;
                if state.status != TaskStatus::InProgress || state.count == count {
                    return Ok(Vec::new());
                }
                let progressed = JobEvent::TaskProgressed { task, count, at };
                (vec![progressed], at)
            }
            JobCommand::FinishTask {
                task,
                run,
                outcome,
                message,
                count,
                output,
                at,
            } => {
                let to = match outcome {
                    TaskOutcome::Success => TaskStatus::Success,
                    TaskOutcome::Warning => TaskStatus::Warning,
                    TaskOutcome::Failure => TaskStatus::Failure,
                    TaskOutcome::Canceled if self.cancel_requested => TaskStatus::Canceled,
                    TaskOutcome::Canceled => return refuse("cancel a task it was not asked to"),
                };
                if self.task(task)?.status == to {
                    return Ok(Vec::new());
                }
                self.current(task, run)?;
                self.moving(task, to)?;
                let message = checked_message(message)?;
                let finished = JobEvent::TaskFinished {
                    task,
                    status: to,
                    message,
                    count,
                    output: Some(output),
                    at,
                };
                (vec![finished], at)
            }
            JobCommand::FailTransiently {
                task,
                run,
                reason,
                retry_at,
                at,
            } => {
                let state = self.running(task)?;
                self.current(task, run)?;
                let reason = checked_message(Some(reason))?.unwrap_or_default();
                let event = if self.cancel_requested || state.attempts > MAX_RETRIES {
                    JobEvent::TaskFinished {
                        task,
                        status: if self.cancel_requested {
                            TaskStatus::Canceled
                        } else {
                            TaskStatus::Failure
                        },
                        message: Some(reason),
                        count: state.count,
                        output: None,
                        at,
                    }
                } else {
                    JobEvent::TaskRetryScheduled {
                        task,
                        attempt: state.attempts,
                        reason,
                        retry_at,
                        at,
                    }
                };
                (vec![event], at)
            }
            JobCommand::InterruptTask {
                task,
                run,
                reason,
                at,
            } => {
                let state = self.running(task)?;
                self.current(task, run)?;
                let reason = checked_message(Some(reason))?.unwrap_or_default();
                let event = if self.cancel_requested {
                    JobEvent::TaskFinished {
                        task,
                        status: TaskStatus::Canceled,
                        message: Some(reason),
                        count: state.count,
                        output: None,
                        at,
                    }
                } else {
                    JobEvent::TaskInterrupted { task, reason, at }
                };
                (vec![event], at)
            }
            JobCommand::Cancel { at } => {
                if !matches!(
                    status,
                    JobStatus::Unverified | JobStatus::Pending | JobStatus::InProgress
                ) {
                    return refuse("be canceled");
                }
                let canceled = self.numbered(TaskStatus::Pending);
                (vec![JobEvent::CancelRequested { canceled, at }], at)
            }
            JobCommand::Resume { at } => {
                if status != JobStatus::Canceled {
                    return refuse("be resumed");
                }
                let tasks = self.numbered(TaskStatus::Canceled);
                (vec![self.requeued(tasks, Requeue::Resume, at)], at)
            }
            JobCommand::RetryFailed { at } => {
                let failed = self.numbered(TaskStatus::Failure);
                if !status.is_finished() || failed.is_empty() {
                    return refuse("retry failed tasks (it has none, or is still running)");
                }
                (vec![self.requeued(failed, Requeue::RetryFailed, at)], at)
            }
            JobCommand::Restart { by, at } => {
                if !status.is_finished() {
                    return refuse("be restarted before it finishes");
                }
                let all = (1..).take(self.tasks.len()).collect();
                (
                    vec![JobEvent::TasksRequeued {
                        tasks: all,
                        reason: Requeue::Restart,
                        by,
                        at,
                    }],
                    at,
                )
            }
        };
        self.with_status(status, events, at)
    }

    fn requeued(&self, tasks: Vec<u32>, reason: Requeue, at: DateTime<Utc>) -> JobEvent<K> {
        JobEvent::TasksRequeued {
            tasks,
            reason,
            by: self.owner.clone().unwrap_or_default(),
            at,
        }
    }

    /// `events`, followed by the job's status change they cause (checked against the table).
    fn with_status(
        &self,
        from: JobStatus,
        mut events: Vec<JobEvent<K>>,
        at: DateTime<Utc>,
    ) -> Result<Vec<JobEvent<K>>, JobError> {
        let mut after = self.clone();
        for event in &events {
            after.apply(event.clone());
        }
        let to = after.derived();
        if to != from {
            if !from.can_transition_to(to) {
                return Err(JobError::InvalidTransition { from, to });
            }
            events.push(JobEvent::StatusChanged { from, to, at });
        }
        Ok(events)
    }

    fn derived(&self) -> JobStatus {
        JobStatus::derive(
            self.verified,
            self.cancel_requested,
            self.tasks.iter().map(|t| t.status),
        )
    }

    fn set_task(&mut self, task: u32, change: impl FnOnce(&mut TaskState)) {
        let slot = usize::try_from(task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|index| self.tasks.get_mut(index));
        if let Some(state) = slot {
            change(state);
        }
    }
}

/// The message if it fits (trimmed to the limit would hide the end of an error: refuse).
fn checked_message(message: Option<String>) -> Result<Option<String>, JobError> {
    match message {
        Some(m)
            if m.chars().count() > MAX_MESSAGE_CHARS
                || m.chars().any(|c| c.is_control() && c != '\n') =>
        {
            Err(JobError::InvalidMessage {
                max: MAX_MESSAGE_CHARS,
            })
        }
        other => Ok(other),
    }
}

impl<K: JobKind> Aggregate for Job<K> {
    const TYPE: &'static str = K::TYPE;
    type Command = JobCommand<K>;
    type Event = JobEvent<K>;
    type Error = JobError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            JobEvent::Created {
                job_id,
                owner,
                spec,
                verified,
                ..
            } => {
                let pending = TaskState {
                    status: TaskStatus::Pending,
                    attempts: 0,
                    count: 0,
                    retry_at: None,
                    runs: 0,
                };
                self.tasks = vec![pending; K::task_count(&spec)];
                self.id = Some(job_id);
                self.owner = Some(owner);
                self.spec = Some(spec);
                self.verified = verified;
                self.status = Some(self.derived());
            }
            JobEvent::Verified { .. } => self.verified = true,
            JobEvent::TaskStarted {
                task, attempt, run, ..
            } => self.set_task(task, |t| {
                t.status = TaskStatus::InProgress;
                t.attempts = attempt;
                t.runs = run;
                t.count = 0;
                t.retry_at = None;
            }),
            JobEvent::TaskProgressed { task, count, .. } => {
                self.set_task(task, |t| t.count = count)
            }
            JobEvent::TaskFinished {
                task,
                status,
                count,
                ..
            } => self.set_task(task, |t| {
                t.status = status;
                t.count = count;
            }),
            JobEvent::TaskRetryScheduled { task, retry_at, .. } => self.set_task(task, |t| {
                t.status = TaskStatus::Pending;
                t.retry_at = Some(retry_at);
            }),
            JobEvent::TaskInterrupted { task, .. } => self.set_task(task, |t| {
                t.status = TaskStatus::Pending;
                t.attempts = t.attempts.saturating_sub(1);
            }),
            JobEvent::CancelRequested { canceled, .. } => {
                self.cancel_requested = true;
                for task in canceled {
                    self.set_task(task, |t| t.status = TaskStatus::Canceled);
                }
            }
            JobEvent::TasksRequeued { tasks, reason, .. } => {
                self.cancel_requested = false;
                for task in tasks {
                    self.set_task(task, |t| {
                        t.status = TaskStatus::Pending;
                        t.attempts = 0;
                        t.retry_at = None;
                        if reason == Requeue::Restart {
                            t.count = 0;
                        }
                    });
                }
            }
            JobEvent::StatusChanged { to, .. } => self.status = Some(to),
        }
    }
}

impl<K: JobKind> crate::Effects for Job<K> {}

impl<K: JobKind> Upcast for Job<K> {
    fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
        Vec::new()
    }
}
