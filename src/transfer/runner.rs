//! The job runner: runs the tasks of transfer jobs (moving studies) and query jobs (searching
//! studies), urgent transfers first, a configurable number at once; live instances share the
//! jobs by partitions of the job id space (`Roles::partitioned`), and a task whose partition
//! is handed on stops between instances and is picked up by the new holder.
//!
//! A query task runs its row's QIDO-RS study search (one per modality when several are
//! given) and records what it found: no match is a warning, more than the limit a warning to
//! narrow the criteria.
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

mod find_studies;
mod move_study;

use std::collections::HashSet;
use std::time::Duration;

use chronicle_aggregates::dicom_server::DicomServer;
use chronicle_aggregates::job::{Job, JobCommand, JobKind, TaskOutcome};
use chronicle_aggregates::query::Query;
use chronicle_aggregates::transfer::Transfer;
use chrono::Utc;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::dicomweb::{DicomWeb, DicomWebError};
use crate::command::{CommandContext, CommandError, Commands};
use crate::log::{next_due, LogWaker, Waiter};
use crate::privacy::Vault;
use crate::projection::{Lease, Role};
use crate::security::EgressPolicy;

/// When the next task waiting for its retry falls due.
const RETRY_DUE: &str = "SELECT min(retry_at) FROM (
        SELECT t.job_id, t.retry_at FROM transfer_tasks t
         WHERE t.status = 'pending' AND t.retry_at > now()
        UNION ALL
        SELECT t.job_id, t.retry_at FROM query_tasks t
         WHERE t.status = 'pending' AND t.retry_at > now()
    ) waiting WHERE chronicle_partition(job_id) = ANY($1)";

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
    /// The wait before a task's first retry after a transient failure; it doubles with each
    /// further attempt, up to 10 minutes.
    pub retry_wait: Duration,
}

/// The longest wait between a task's attempts.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(600);

/// The transfer worker.
#[derive(Clone)]
pub struct TransferRunner {
    commands: Commands,
    pool: PgPool,
    /// Opens patients' pseudonym keys.
    vault: Vault,
    http: reqwest::Client,
    settings: RunnerSettings,
}

/// How one run of a task ended; a finished task reports its count and the kind's output.
enum Ended<O> {
    Finished(TaskOutcome, Option<String>, u32, O),
    Transient(String),
    Interrupted,
}

/// Which kind of job a task belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Transfer,
    Query,
}

impl Kind {
    fn jobs_table(self) -> &'static str {
        match self {
            Self::Transfer => "transfer_jobs",
            Self::Query => "query_jobs",
        }
    }
}

/// A task to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TaskRef {
    kind: Kind,
    job: Uuid,
    task: u32,
}

/// A task this runner started: its run (every report names it) and attempt.
#[derive(Debug, Clone, Copy)]
struct Started {
    task: TaskRef,
    run: u32,
    attempt: u32,
}

impl TransferRunner {
    /// A runner sending commands through `commands`.
    ///
    /// # Errors
    /// The HTTP client cannot be built.
    pub fn new(
        commands: Commands,
        pool: PgPool,
        vault: Vault,
        settings: RunnerSettings,
        egress: &EgressPolicy,
    ) -> anyhow::Result<Self> {
        let http = egress
            .client_builder()
            // A pause, not a whole transfer: a large instance may take longer than this.
            .connect_timeout(settings.http_timeout)
            .read_timeout(settings.http_timeout)
            .build()?;
        Ok(Self {
            commands,
            pool,
            vault,
            http,
            settings,
        })
    }

    /// The role that lets an instance run jobs' tasks.
    pub const ROLE: &'static str = "transfers";

    /// Runs until `shutdown`, moving studies while this instance holds `role`; it looks for
    /// work when read models change (`waker`), when a task's retry falls due and when a
    /// task ends.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        let pause = self.settings.poll_every;
        role.lead_while_held(pause, &shutdown, |role| {
            self.lead(role, waker.following(&["transfers", "queries"]), &shutdown)
        })
        .await;
    }

    async fn lead(&self, mut role: Role, mut wake: Waiter, shutdown: &CancellationToken) {
        let mut running: JoinSet<TaskRef> = JoinSet::new();
        let mut mine: HashSet<TaskRef> = HashSet::new();
        let stop = shutdown.child_token();
        while !shutdown.is_cancelled() && role.is_held() {
            let looked = tokio::time::Instant::now();
            if let Err(error) = self.dispatch(&mut running, &mut mine, &role, &stop).await {
                tracing::warn!(%error, "reading transfer work failed; will retry");
            }
            let due = next_due(&self.pool, RETRY_DUE, &role.partitions()).await;
            tokio::select! {
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(task) = done {
                        mine.remove(&task);
                    }
                }
                () = wake.wait_until(due) => {
                    // However busy the log, look at most every `poll_every`.
                    tokio::time::sleep_until(looked + self.settings.poll_every).await;
                }
                () = role.changed() => {}
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
        role: &Role,
        stop: &CancellationToken,
    ) -> Result<(), CommandError> {
        let free = self.settings.concurrency.saturating_sub(running.len());
        let rows: Vec<(bool, Uuid, i32, String)> = sqlx::query_as(
            "SELECT true, t.job_id, t.task, t.status, j.urgent, j.created_at
               FROM transfer_jobs j JOIN transfer_tasks t ON t.job_id = j.id
              WHERE j.status IN ('pending', 'in_progress', 'canceling')
                AND t.status IN ('pending', 'in_progress')
                AND (t.retry_at IS NULL OR t.retry_at <= now())
                AND chronicle_partition(j.id) = ANY($2)
             UNION ALL
             SELECT false, t.job_id, t.task, t.status, false, j.created_at
               FROM query_jobs j JOIN query_tasks t ON t.job_id = j.id
              WHERE j.status IN ('pending', 'in_progress', 'canceling')
                AND t.status IN ('pending', 'in_progress')
                AND (t.retry_at IS NULL OR t.retry_at <= now())
                AND chronicle_partition(j.id) = ANY($2)
              ORDER BY 5 DESC, 6, 3
              LIMIT $1",
        )
        .bind(i64::try_from(free + mine.len() + 16).unwrap_or(i64::MAX))
        .bind(role.partitions())
        .fetch_all(&self.pool)
        .await?;
        let mut started = 0;
        for (transfer, job, task, status) in rows {
            let Ok(task) = u32::try_from(task) else {
                continue;
            };
            let kind = if transfer {
                Kind::Transfer
            } else {
                Kind::Query
            };
            let task = TaskRef { kind, job, task };
            if mine.contains(&task) {
                continue;
            }
            // Handed on since the read: its new holder runs it.
            let Some(lease) = role.lease(job) else {
                continue;
            };
            if status == "in_progress" {
                self.interrupt(task, "the runner that started it stopped")
                    .await;
                continue;
            }
            if started >= free {
                continue;
            }
            let launched = match task.kind {
                Kind::Transfer => self.launch::<Transfer>(task, lease, running, stop).await,
                Kind::Query => self.launch::<Query>(task, lease, running, stop).await,
            };
            match launched {
                Ok(()) => {
                    mine.insert(task);
                    started += 1;
                }
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

    async fn command<K: JobKind>(
        &self,
        task: TaskRef,
        command: JobCommand<K>,
    ) -> Result<(), CommandError> {
        self.commands
            .execute::<Job<K>>(
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
        let (number, reason, at) = (task.task, reason.to_owned(), Utc::now());
        let recorded = match task.kind {
            Kind::Transfer => {
                let command = JobCommand::<Transfer>::InterruptTask {
                    task: number,
                    run: None,
                    reason,
                    at,
                };
                self.command(task, command).await
            }
            Kind::Query => {
                let command = JobCommand::<Query>::InterruptTask {
                    task: number,
                    run: None,
                    reason,
                    at,
                };
                self.command(task, command).await
            }
        };
        if let Err(error) = recorded {
            tracing::debug!(%error, job = %task.job, task = task.task, "interrupt not recorded");
        }
    }

    /// Starts the task and runs it in `running` until it ends (or its partition is handed
    /// on: it is interrupted), then records how, holding `lease` until then.
    async fn launch<K: JobKind>(
        &self,
        task: TaskRef,
        lease: Lease,
        running: &mut JoinSet<TaskRef>,
        stop: &CancellationToken,
    ) -> Result<(), CommandError>
    where
        Self: Runs<K>,
    {
        let start = JobCommand::<K>::StartTask {
            task: task.task,
            at: Utc::now(),
        };
        self.command(task, start).await?;
        let job = self.commands.load::<Job<K>>(&task.job.to_string()).await?;
        let state = usize::try_from(task.task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| job.tasks().get(i));
        let started = Started {
            task,
            run: state.map_or(0, |s| s.runs),
            attempt: state.map_or(1, |s| s.attempts),
        };
        let runner = self.clone();
        let stop = stop.clone();
        running.spawn(async move {
            let run = Runs::<K>::run_task(&runner, started, &job, &stop);
            let ended = tokio::select! {
                ended = tokio::time::timeout(runner.settings.task_timeout, run) => {
                    ended.unwrap_or_else(|_| Ended::Transient(format!(
                        "timed out after {} s", runner.settings.task_timeout.as_secs()
                    )))
                }
                () = stop.cancelled() => Ended::Interrupted,
                () = lease.closing() => Ended::Interrupted,
            };
            runner.finish::<K>(started, ended).await;
            drop(lease);
            task
        });
        Ok(())
    }

    /// Records how a run ended.
    async fn finish<K: JobKind>(&self, started: Started, ended: Ended<K::Output>) {
        let Started { task, run, attempt } = started;
        let (number, at) = (task.task, Utc::now());
        let wait = self
            .settings
            .retry_wait
            .saturating_mul(2_u32.saturating_pow(attempt.saturating_sub(1)))
            .min(MAX_RETRY_WAIT);
        let retry_at = at + chrono::Duration::from_std(wait).unwrap_or_default();
        let command = match ended {
            Ended::Finished(outcome, message, count, output) => JobCommand::<K>::FinishTask {
                task: number,
                run: Some(run),
                outcome,
                message: message.as_deref().map(clean),
                count,
                output,
                at,
            },
            Ended::Transient(reason) => JobCommand::FailTransiently {
                task: number,
                run: Some(run),
                reason: clean(&reason),
                retry_at,
                at,
            },
            Ended::Interrupted => JobCommand::InterruptTask {
                task: number,
                run: Some(run),
                reason: "the runner stopped".into(),
                at,
            },
        };
        if let Err(error) = self.command(task, command).await {
            tracing::warn!(%error, job = %task.job, task = task.task, "task outcome not recorded; it will be interrupted and run again");
        }
    }

    /// The client of registered server `name`.
    async fn server<O: Default>(&self, name: &str) -> Result<DicomWeb, Ended<O>> {
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
                O::default(),
            )
        })?;
        DicomWeb::new(self.http.clone(), name, spec).map_err(|e| failed(&e, 0))
    }

    /// True once the task's job is being canceled.
    async fn canceling(&self, task: TaskRef) -> bool {
        let table = task.kind.jobs_table();
        sqlx::query_scalar::<_, String>(&format!("SELECT status FROM {table} WHERE id = $1"))
            .bind(task.job)
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten()
            .is_some_and(|status| status == "canceling" || status == "canceled")
    }
}

/// Running one started task of kind `K` to its end.
trait Runs<K: JobKind> {
    /// Runs `task` of `job`.
    fn run_task(
        &self,
        started: Started,
        job: &Job<K>,
        stop: &CancellationToken,
    ) -> impl std::future::Future<Output = Ended<K::Output>> + Send;
}

/// A message as a task may keep it: control characters (a server's `\r\n`, tabs) become
/// spaces, and it is cut to the length the job keeps.
fn clean(message: &str) -> String {
    const KEPT: usize = 2_000;
    let cleaned: String = message
        .chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect();
    match cleaned.char_indices().nth(KEPT - 1) {
        Some((end, _)) => format!("{}…", &cleaned[..end]),
        None => cleaned,
    }
}

/// A DICOMweb failure as the task's end: transient, or a failure.
fn failed<O: Default>(error: &DicomWebError, count: u32) -> Ended<O> {
    if error.transient {
        Ended::Transient(error.message.clone())
    } else {
        Ended::Finished(
            TaskOutcome::Failure,
            Some(error.message.clone()),
            count,
            O::default(),
        )
    }
}
