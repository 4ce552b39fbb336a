//! The transfer runner: moves studies task by task, urgent jobs first, a configurable number
//! at once, on the instance that holds the `transfers` role.
//!
//! A task: QIDO-RS finds the study's series (only the requested ones, when given) and their
//! instances; each instance is retrieved (WADO-RS), pseudonymized when the job asks, and
//! stored (STOW-RS) before the next is fetched. Progress is reported as it goes; between
//! instances the runner checks whether the job is canceling. Outcomes: every instance stored
//! → success; a requested series missing → warning; study missing, destination refusing, or
//! an instance that cannot be pseudonymized → failure; unreachable servers, 408/429/5xx and
//! the task timeout → transient (retried by the job up to its limit).
//!
//! A task found running that this runner did not start was cut off (a crash, a lost role):
//! it is interrupted (waits again) and picked up anew. Re-sending instances is harmless: the
//! destination keeps one copy per SOP instance UID, and pseudonymized UIDs are stable within
//! a job.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use chronicle_aggregates::dicom_server::DicomServer;
use chronicle_aggregates::transfer::{TaskOutcome, TaskSpec, TransferCommand, TransferJob};
use chrono::Utc;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dicomweb::{DicomWeb, DicomWebError};
use super::pseudonymize::Pseudonymizer;
use crate::command::{CommandContext, CommandError, Commands};
use crate::projection::Leadership;

/// How often leadership is confirmed.
const CONFIRM_EVERY: Duration = Duration::from_secs(5);
/// How often progress is recorded at most.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// How the runner runs.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Tasks run at once.
    pub concurrency: usize,
    /// How often it looks for work.
    pub poll_every: Duration,
    /// A task running longer fails (transiently).
    pub task_timeout: Duration,
    /// Timeout of one DICOMweb HTTP call.
    pub http_timeout: Duration,
}

/// The transfer worker.
#[derive(Clone)]
pub struct TransferRunner {
    commands: Commands,
    pool: PgPool,
    options: PgConnectOptions,
    http: reqwest::Client,
    settings: RunnerSettings,
}

/// How one run of a task ended.
enum Ended {
    Finished(TaskOutcome, Option<String>, u32),
    Transient(String),
    Interrupted,
}

/// A task to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TaskRef {
    job: Uuid,
    task: u32,
}

impl TransferRunner {
    /// A runner sending commands through `commands`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        commands: Commands,
        pool: PgPool,
        options: PgConnectOptions,
        settings: RunnerSettings,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.http_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            commands,
            pool,
            options,
            http,
            settings,
        })
    }

    /// Runs until `shutdown`, moving studies while this instance holds the role.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match Leadership::try_claim(&self.options, "transfers").await {
                Ok(Some(leadership)) => self.lead(leadership, &shutdown).await,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot claim the transfers role"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.poll_every) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn lead(&self, mut leadership: Leadership, shutdown: &CancellationToken) {
        let mut running: JoinSet<TaskRef> = JoinSet::new();
        let mut mine: HashSet<TaskRef> = HashSet::new();
        let stop = shutdown.child_token();
        let mut confirmed = Instant::now();
        let mut ticks = tokio::time::interval(self.settings.poll_every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !shutdown.is_cancelled() {
            if confirmed.elapsed() >= CONFIRM_EVERY {
                if leadership.confirm().await.is_err() {
                    break;
                }
                confirmed = Instant::now();
            }
            if let Err(error) = self.dispatch(&mut running, &mut mine, &stop).await {
                tracing::warn!(%error, "reading transfer work failed; will retry");
            }
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(task) = done {
                        mine.remove(&task);
                    }
                }
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => {}
            }
        }
        // Running tasks see the stop and record their interruption.
        stop.cancel();
        while running.join_next().await.is_some() {}
    }

    /// Starts runnable tasks up to the concurrency; interrupts orphaned ones.
    async fn dispatch(
        &self,
        running: &mut JoinSet<TaskRef>,
        mine: &mut HashSet<TaskRef>,
        stop: &CancellationToken,
    ) -> Result<(), CommandError> {
        let free = self.settings.concurrency.saturating_sub(running.len());
        let rows: Vec<(Uuid, i32, String)> = sqlx::query_as(
            "SELECT t.job_id, t.task, t.status
               FROM transfer_jobs j JOIN transfer_tasks t ON t.job_id = j.id
              WHERE j.status IN ('pending', 'in_progress', 'canceling')
                AND t.status IN ('pending', 'in_progress')
              ORDER BY j.urgent DESC, j.created_at, t.task
              LIMIT $1",
        )
        .bind(i64::try_from(free + mine.len() + 16).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let mut started = 0;
        for (job, task, status) in rows {
            let Ok(task) = u32::try_from(task) else {
                continue;
            };
            let task = TaskRef { job, task };
            if mine.contains(&task) {
                continue;
            }
            if status == "in_progress" {
                self.interrupt(task, "the runner that started it stopped")
                    .await;
                continue;
            }
            if started >= free {
                continue;
            }
            match self.start(task).await {
                Ok(Some((job_state, spec))) => {
                    mine.insert(task);
                    started += 1;
                    let runner = self.clone();
                    let stop = stop.clone();
                    running.spawn(async move {
                        runner.execute(task, &job_state, &spec, &stop).await;
                        task
                    });
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::debug!(%error, job = %task.job, task = task.task, "task not started")
                }
            }
        }
        Ok(())
    }

    fn context(task: TaskRef) -> CommandContext {
        CommandContext::system(task.job)
    }

    async fn command(&self, task: TaskRef, command: TransferCommand) -> Result<(), CommandError> {
        self.commands
            .execute::<TransferJob>(
                &Self::context(task),
                &task.job.to_string(),
                command,
                &(),
                None,
            )
            .await
            .map(|_| ())
    }

    async fn interrupt(&self, task: TaskRef, reason: &str) {
        let command = TransferCommand::InterruptTask {
            task: task.task,
            reason: reason.to_owned(),
            at: Utc::now(),
        };
        if let Err(error) = self.command(task, command).await {
            tracing::debug!(%error, job = %task.job, task = task.task, "interrupt not recorded");
        }
    }

    /// Starts the task; its job and spec when it started.
    async fn start(&self, task: TaskRef) -> Result<Option<(TransferJob, TaskSpec)>, CommandError> {
        let start = TransferCommand::StartTask {
            task: task.task,
            at: Utc::now(),
        };
        self.command(task, start).await?;
        let job = self
            .commands
            .load::<TransferJob>(&task.job.to_string())
            .await?;
        let spec = usize::try_from(task.task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| job.spec()?.tasks.get(i).cloned());
        Ok(spec.map(|spec| (job, spec)))
    }

    /// Runs one started task to its end and records it.
    async fn execute(
        &self,
        task: TaskRef,
        job: &TransferJob,
        spec: &TaskSpec,
        stop: &CancellationToken,
    ) {
        let run = self.move_study(task, job, spec, stop);
        let ended = tokio::select! {
            ended = tokio::time::timeout(self.settings.task_timeout, run) => {
                ended.unwrap_or_else(|_| Ended::Transient(format!(
                    "timed out after {} s", self.settings.task_timeout.as_secs()
                )))
            }
            () = stop.cancelled() => Ended::Interrupted,
        };
        let at = Utc::now();
        let command = match ended {
            Ended::Finished(outcome, message, instances) => TransferCommand::FinishTask {
                task: task.task,
                outcome,
                message,
                count: instances,
                output: (),
                at,
            },
            Ended::Transient(reason) => TransferCommand::FailTransiently {
                task: task.task,
                reason,
                at,
            },
            Ended::Interrupted => TransferCommand::InterruptTask {
                task: task.task,
                reason: "the runner stopped".into(),
                at,
            },
        };
        if let Err(error) = self.command(task, command).await {
            tracing::warn!(%error, job = %task.job, task = task.task, "task outcome not recorded; it will be interrupted and run again");
        }
    }

    /// The client of registered server `name`.
    async fn server(&self, name: &str) -> Result<DicomWeb, Ended> {
        let server = self
            .commands
            .load::<DicomServer>(name)
            .await
            .map_err(|e| Ended::Transient(e.to_string()))?;
        let spec = server.spec().ok_or_else(|| {
            Ended::Finished(
                TaskOutcome::Failure,
                Some(format!("{name:?} is no longer a registered DICOM server")),
                0,
            )
        })?;
        DicomWeb::new(self.http.clone(), name, spec).map_err(|e| failed(&e, 0))
    }

    async fn canceling(&self, job: Uuid) -> bool {
        sqlx::query_scalar::<_, String>("SELECT status FROM transfer_jobs WHERE id = $1")
            .bind(job)
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten()
            .is_some_and(|status| status == "canceling" || status == "canceled")
    }

    async fn move_study(
        &self,
        task: TaskRef,
        job: &TransferJob,
        spec: &TaskSpec,
        stop: &CancellationToken,
    ) -> Ended {
        match self.try_move(task, job, spec, stop).await {
            Ok(ended) | Err(ended) => ended,
        }
    }

    async fn try_move(
        &self,
        task: TaskRef,
        job: &TransferJob,
        spec: &TaskSpec,
        stop: &CancellationToken,
    ) -> Result<Ended, Ended> {
        let Some(setup) = job.spec() else {
            return Err(Ended::Transient("the job has no set-up".into()));
        };
        let source = self.server(&setup.source).await?;
        let destination = self.server(&setup.destination).await?;
        let study = &spec.study_instance_uid;
        let found = source.series(study).await.map_err(|e| failed(&e, 0))?;
        if found.is_empty() {
            return Ok(Ended::Finished(
                TaskOutcome::Failure,
                Some(format!("study {study} not found at {}", setup.source)),
                0,
            ));
        }
        let (series, missing): (Vec<String>, Vec<String>) = if spec.series_instance_uids.is_empty()
        {
            (found, Vec::new())
        } else {
            spec.series_instance_uids
                .iter()
                .cloned()
                .partition(|s| found.contains(s))
        };
        if series.is_empty() {
            return Ok(Ended::Finished(
                TaskOutcome::Failure,
                Some(format!(
                    "none of the requested series of study {study} found at {}",
                    setup.source
                )),
                0,
            ));
        }
        let pseudonymizer = setup
            .pseudonymize
            .then(|| Pseudonymizer::new(task.job, setup.protocol.clone()));
        let pseudonym = pseudonymizer.as_ref().map(|p| {
            spec.pseudonym
                .clone()
                .or_else(|| setup.pseudonym.clone())
                .unwrap_or_else(|| p.derived_pseudonym(&spec.patient_id))
        });
        let mut moved = 0_u32;
        let mut reported = Instant::now();
        for series_uid in &series {
            let instances = source
                .instances(study, series_uid)
                .await
                .map_err(|e| failed(&e, moved))?;
            for instance in instances {
                if stop.is_cancelled() {
                    return Ok(Ended::Interrupted);
                }
                if self.canceling(task.job).await {
                    return Ok(Ended::Finished(
                        TaskOutcome::Canceled,
                        Some("canceled".into()),
                        moved,
                    ));
                }
                let file = source
                    .retrieve(study, series_uid, &instance)
                    .await
                    .map_err(|e| failed(&e, moved))?;
                let file = match (&pseudonymizer, &pseudonym) {
                    (Some(p), Some(name)) => p.apply(&file, name).map_err(|e| {
                        Ended::Finished(TaskOutcome::Failure, Some(e.to_string()), moved)
                    })?,
                    _ => file,
                };
                destination
                    .store(file)
                    .await
                    .map_err(|e| failed(&e, moved))?;
                moved += 1;
                if reported.elapsed() >= PROGRESS_EVERY {
                    reported = Instant::now();
                    let progress = TransferCommand::ReportProgress {
                        task: task.task,
                        count: moved,
                        at: Utc::now(),
                    };
                    if let Err(error) = self.command(task, progress).await {
                        tracing::debug!(%error, "progress not recorded");
                    }
                }
            }
        }
        Ok(if missing.is_empty() {
            Ended::Finished(TaskOutcome::Success, None, moved)
        } else {
            Ended::Finished(
                TaskOutcome::Warning,
                Some(format!(
                    "series not found at {}: {}",
                    setup.source,
                    missing.join(", ")
                )),
                moved,
            )
        })
    }
}

/// A DICOMweb failure as the task's end: transient, or a failure.
fn failed(error: &DicomWebError, moved: u32) -> Ended {
    if error.transient {
        Ended::Transient(error.message.clone())
    } else {
        Ended::Finished(TaskOutcome::Failure, Some(error.message.clone()), moved)
    }
}
