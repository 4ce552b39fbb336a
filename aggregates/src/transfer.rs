//! A transfer job: DICOM studies to move from one PACS to another, one task per study.
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
mod values;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventUpcaster;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::TransferCommand;
pub use error::TransferError;
pub use event::TransferEvent;
pub use status::{JobStatus, TaskStatus};
pub use values::{is_uid, Requeue, TaskOutcome, TaskSpec, TransferSpec, TrialProtocol, MAX_TASKS};

use crate::Upcast;

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
    /// Instances stored by the latest attempt.
    pub instances: u32,
}

/// A transfer job's state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransferJob {
    id: Option<Uuid>,
    owner: Option<String>,
    spec: Option<TransferSpec>,
    verified: bool,
    cancel_requested: bool,
    status: Option<JobStatus>,
    tasks: Vec<TaskState>,
}

impl TransferJob {
    /// The job's status, `None` before creation.
    pub fn status(&self) -> Option<JobStatus> {
        self.status
    }

    /// The owning client.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The set-up.
    pub fn spec(&self) -> Option<&TransferSpec> {
        self.spec.as_ref()
    }

    /// The tasks' states, task 1 first.
    pub fn tasks(&self) -> &[TaskState] {
        &self.tasks
    }

    fn task(&self, task: u32) -> Result<TaskState, TransferError> {
        usize::try_from(task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|index| self.tasks.get(index))
            .copied()
            .ok_or(TransferError::NoSuchTask { task })
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
    fn moving(&self, task: u32, to: TaskStatus) -> Result<TaskState, TransferError> {
        let state = self.task(task)?;
        if state.status.can_transition_to(to) {
            Ok(state)
        } else {
            Err(TransferError::InvalidTaskTransition {
                task,
                from: state.status,
                to,
            })
        }
    }

    /// The task, if it is running (a failure or interruption can only end a run).
    fn running(&self, task: u32) -> Result<TaskState, TransferError> {
        let state = self.task(task)?;
        if state.status == TaskStatus::InProgress {
            Ok(state)
        } else {
            Err(TransferError::InvalidTaskTransition {
                task,
                from: state.status,
                to: TaskStatus::Pending,
            })
        }
    }

    fn decide(&self, command: TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        if let TransferCommand::Create {
            job_id,
            owner,
            spec,
            trusted,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(TransferError::AlreadyCreated);
            }
            let spec = spec
                .validate()
                .map_err(|problems| TransferError::InvalidSpec { problems })?;
            return Ok(vec![TransferEvent::Created {
                job_id,
                owner,
                spec,
                verified: trusted,
                at,
            }]);
        }
        let Some(status) = self.status else {
            return Err(TransferError::NotFound);
        };
        let refuse = |action| Err(TransferError::JobRefuses { status, action });
        let (events, at) = match command {
            TransferCommand::Create { .. } => return Err(TransferError::AlreadyCreated),
            TransferCommand::Verify { by, at } => {
                if status != JobStatus::Unverified {
                    return refuse("be verified");
                }
                (vec![TransferEvent::Verified { by, at }], at)
            }
            TransferCommand::StartTask { task, at } => {
                if !matches!(status, JobStatus::Pending | JobStatus::InProgress) {
                    return refuse("start a task");
                }
                let state = self.moving(task, TaskStatus::InProgress)?;
                let attempt = state.attempts + 1;
                (vec![TransferEvent::TaskStarted { task, attempt, at }], at)
            }
            TransferCommand::ReportProgress {
                task,
                instances,
                at,
            } => {
                let state = self.task(task)?;
                if state.status != TaskStatus::InProgress || state.instances == instances {
                    return Ok(Vec::new());
                }
                let progressed = TransferEvent::TaskProgressed {
                    task,
                    instances,
                    at,
                };
                (vec![progressed], at)
            }
            TransferCommand::FinishTask {
                task,
                outcome,
                message,
                instances,
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
                self.moving(task, to)?;
                let message = checked_message(message)?;
                let finished = TransferEvent::TaskFinished {
                    task,
                    status: to,
                    message,
                    instances,
                    at,
                };
                (vec![finished], at)
            }
            TransferCommand::FailTransiently { task, reason, at } => {
                let state = self.running(task)?;
                let reason = checked_message(Some(reason))?.unwrap_or_default();
                let event = if self.cancel_requested || state.attempts > MAX_RETRIES {
                    TransferEvent::TaskFinished {
                        task,
                        status: if self.cancel_requested {
                            TaskStatus::Canceled
                        } else {
                            TaskStatus::Failure
                        },
                        message: Some(reason),
                        instances: state.instances,
                        at,
                    }
                } else {
                    TransferEvent::TaskRetryScheduled {
                        task,
                        attempt: state.attempts,
                        reason,
                        at,
                    }
                };
                (vec![event], at)
            }
            TransferCommand::InterruptTask { task, reason, at } => {
                let state = self.running(task)?;
                let reason = checked_message(Some(reason))?.unwrap_or_default();
                let event = if self.cancel_requested {
                    TransferEvent::TaskFinished {
                        task,
                        status: TaskStatus::Canceled,
                        message: Some(reason),
                        instances: state.instances,
                        at,
                    }
                } else {
                    TransferEvent::TaskInterrupted { task, reason, at }
                };
                (vec![event], at)
            }
            TransferCommand::Cancel { at } => {
                if !matches!(
                    status,
                    JobStatus::Unverified | JobStatus::Pending | JobStatus::InProgress
                ) {
                    return refuse("be canceled");
                }
                let canceled = self.numbered(TaskStatus::Pending);
                (vec![TransferEvent::CancelRequested { canceled, at }], at)
            }
            TransferCommand::Resume { at } => {
                if status != JobStatus::Canceled {
                    return refuse("be resumed");
                }
                let tasks = self.numbered(TaskStatus::Canceled);
                (vec![self.requeued(tasks, Requeue::Resume, at)], at)
            }
            TransferCommand::RetryFailed { at } => {
                let failed = self.numbered(TaskStatus::Failure);
                if !status.is_finished() || failed.is_empty() {
                    return refuse("retry failed tasks (it has none, or is still running)");
                }
                (vec![self.requeued(failed, Requeue::RetryFailed, at)], at)
            }
            TransferCommand::Restart { by, at } => {
                if !status.is_finished() {
                    return refuse("be restarted before it finishes");
                }
                let all = (1..).take(self.tasks.len()).collect();
                (
                    vec![TransferEvent::TasksRequeued {
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

    fn requeued(&self, tasks: Vec<u32>, reason: Requeue, at: DateTime<Utc>) -> TransferEvent {
        TransferEvent::TasksRequeued {
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
        mut events: Vec<TransferEvent>,
        at: DateTime<Utc>,
    ) -> Result<Vec<TransferEvent>, TransferError> {
        let mut after = self.clone();
        for event in &events {
            after.apply(event.clone());
        }
        let to = after.derived();
        if to != from {
            if !from.can_transition_to(to) {
                return Err(TransferError::InvalidTransition { from, to });
            }
            events.push(TransferEvent::StatusChanged { from, to, at });
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
fn checked_message(message: Option<String>) -> Result<Option<String>, TransferError> {
    match message {
        Some(m)
            if m.chars().count() > MAX_MESSAGE_CHARS
                || m.chars().any(|c| c.is_control() && c != '\n') =>
        {
            Err(TransferError::InvalidMessage {
                max: MAX_MESSAGE_CHARS,
            })
        }
        other => Ok(other),
    }
}

impl Aggregate for TransferJob {
    const TYPE: &'static str = "TransferJob";
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;
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
            TransferEvent::Created {
                job_id,
                owner,
                spec,
                verified,
                ..
            } => {
                let pending = TaskState {
                    status: TaskStatus::Pending,
                    attempts: 0,
                    instances: 0,
                };
                self.tasks = vec![pending; spec.tasks.len()];
                self.id = Some(job_id);
                self.owner = Some(owner);
                self.spec = Some(spec);
                self.verified = verified;
                self.status = Some(self.derived());
            }
            TransferEvent::Verified { .. } => self.verified = true,
            TransferEvent::TaskStarted { task, attempt, .. } => self.set_task(task, |t| {
                t.status = TaskStatus::InProgress;
                t.attempts = attempt;
                t.instances = 0;
            }),
            TransferEvent::TaskProgressed {
                task, instances, ..
            } => self.set_task(task, |t| t.instances = instances),
            TransferEvent::TaskFinished {
                task,
                status,
                instances,
                ..
            } => self.set_task(task, |t| {
                t.status = status;
                t.instances = instances;
            }),
            TransferEvent::TaskRetryScheduled { task, .. } => {
                self.set_task(task, |t| t.status = TaskStatus::Pending);
            }
            TransferEvent::TaskInterrupted { task, .. } => self.set_task(task, |t| {
                t.status = TaskStatus::Pending;
                t.attempts = t.attempts.saturating_sub(1);
            }),
            TransferEvent::CancelRequested { canceled, .. } => {
                self.cancel_requested = true;
                for task in canceled {
                    self.set_task(task, |t| t.status = TaskStatus::Canceled);
                }
            }
            TransferEvent::TasksRequeued { tasks, reason, .. } => {
                self.cancel_requested = false;
                for task in tasks {
                    self.set_task(task, |t| {
                        t.status = TaskStatus::Pending;
                        t.attempts = 0;
                        if reason == Requeue::Restart {
                            t.instances = 0;
                        }
                    });
                }
            }
            TransferEvent::StatusChanged { to, .. } => self.status = Some(to),
        }
    }
}

impl Upcast for TransferJob {
    fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
        Vec::new()
    }
}
