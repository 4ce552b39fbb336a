//! Transfer jobs over GraphQL: DICOM servers (admin), jobs from a task list or a CSV,
//! cancel/resume/retry/restart/verify, jobs with their task connections, live updates.

use async_graphql::connection::Connection;
use async_graphql::{
    ComplexObject, Context, Enum, InputObject, Object, SimpleObject, Subscription,
};
use chronicle_aggregates::dicom_server::{ServerAuth, ServerSpec};
use chronicle_aggregates::transfer::{TaskSpec, TransferEvent, TransferSpec, TrialProtocol};
use chronicle_projections::transfers::{self, JobRow, ServerRow, TaskRow};
use chronicle_projections::LogCursor;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::outcome::{idempotency, CommandOutcome};
use super::pagination::{connection, keyset_after, page_size, KeysetCursor};
use super::{ApiError, Caller};
use crate::command::Authority;
use crate::log::{tail, LogFilter, LogReader, LogWaker};
use crate::transfer::{csv_rows, JobAction, TransferActions};

/// How Chronicle authenticates to a DICOM server.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum AuthKind {
    /// HTTP basic; the variable holds `user:password`.
    Basic,
    /// Bearer token; the variable holds the token.
    Bearer,
}

/// Credentials by reference: the value stays in the server's environment.
#[derive(InputObject, Serialize)]
pub(crate) struct ServerAuthInput {
    /// Basic or bearer.
    kind: AuthKind,
    /// The environment variable holding the credentials.
    secret_env: String,
}

/// A DICOM server's registration.
#[derive(InputObject, Serialize)]
pub(crate) struct DicomServerInput {
    /// Its name: 1–64 letters, digits, `-`, `_`, `.`.
    name: String,
    /// DICOMweb base URL, e.g. `http://pacs:8042/dicom-web`.
    base_url: String,
    /// Credentials, if the server needs them.
    auth: Option<ServerAuthInput>,
}

/// One study to move.
#[derive(InputObject, Serialize)]
pub(crate) struct TransferTaskInput {
    /// The patient's id at the source.
    patient_id: String,
    /// The study.
    study_instance_uid: String,
    /// Only these series (all when omitted).
    series_instance_uids: Option<Vec<String>>,
    /// This task's pseudonym.
    pseudonym: Option<String>,
}

/// The trial protocol stamped into the data.
#[derive(InputObject, Serialize)]
pub(crate) struct TrialProtocolInput {
    /// Clinical Trial Protocol ID.
    id: String,
    /// Clinical Trial Protocol Name.
    name: Option<String>,
}

/// What every job has, from tasks or a CSV.
#[derive(InputObject, Serialize)]
pub(crate) struct TransferSetupInput {
    /// The registered source server.
    source: String,
    /// The registered destination server.
    destination: String,
    /// Replace identifying attributes and UIDs on the way.
    #[graphql(default)]
    pseudonymize: bool,
    /// The pseudonym for every patient (else one per patient, or the task's own).
    pseudonym: Option<String>,
    /// Stamped into the data.
    protocol: Option<TrialProtocolInput>,
    /// Runs before other jobs.
    #[graphql(default)]
    urgent: bool,
}

impl TransferSetupInput {
    fn spec(self, tasks: Vec<TaskSpec>) -> TransferSpec {
        TransferSpec {
            source: self.source,
            destination: self.destination,
            pseudonymize: self.pseudonymize,
            pseudonym: self.pseudonym,
            protocol: self.protocol.map(|p| TrialProtocol {
                id: p.id,
                name: p.name,
            }),
            urgent: self.urgent,
            tasks,
        }
    }
}

/// A DICOM server as registered.
#[derive(SimpleObject)]
pub(crate) struct DicomServerView {
    /// Its name.
    name: String,
    /// DICOMweb base URL.
    base_url: String,
    /// `basic`, `bearer`, or none.
    auth_kind: Option<String>,
    /// The variable holding its credentials.
    auth_secret_env: Option<String>,
    /// Registered.
    registered_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<ServerRow> for DicomServerView {
    fn from(row: ServerRow) -> Self {
        Self {
            name: row.name,
            base_url: row.base_url,
            auth_kind: row.auth_kind,
            auth_secret_env: row.auth_secret_env,
            registered_at: row.registered_at,
            updated_at: row.updated_at,
        }
    }
}

/// A transfer job.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct TransferJobView {
    /// The job's id.
    id: Uuid,
    /// The owning client.
    owner: String,
    /// Source server.
    source: String,
    /// Destination server.
    destination: String,
    /// `unverified`, `pending`, `in_progress`, `success`, `warning`, `failure`,
    /// `canceling` or `canceled` — derived from the tasks.
    status: String,
    /// Pseudonymized on the way.
    pseudonymize: bool,
    /// Runs first.
    urgent: bool,
    /// Trial protocol id stamped.
    protocol_id: Option<String>,
    /// Trial protocol name stamped.
    protocol_name: Option<String>,
    /// Tasks (studies).
    task_count: i32,
    /// Instances stored so far.
    instances_moved: i64,
    /// The admin who verified it.
    verified_by: Option<String>,
    /// Stream version reflected.
    version: i64,
    /// Created.
    created_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<JobRow> for TransferJobView {
    fn from(row: JobRow) -> Self {
        Self {
            id: row.id,
            owner: row.owner,
            source: row.source,
            destination: row.destination,
            status: row.status,
            pseudonymize: row.pseudonymize,
            urgent: row.urgent,
            protocol_id: row.protocol_id,
            protocol_name: row.protocol_name,
            task_count: row.task_count,
            instances_moved: row.instances_moved,
            verified_by: row.verified_by,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// One study of a job.
#[derive(SimpleObject)]
pub(crate) struct TransferTaskView {
    /// Its number in the job, from 1.
    task: i32,
    /// Patient at the source.
    patient_id: String,
    /// The study.
    study_instance_uid: String,
    /// Only these series (all when empty).
    series_instance_uids: Vec<String>,
    /// Its own pseudonym.
    pseudonym: Option<String>,
    /// `pending`, `in_progress`, `success`, `warning`, `failure` or `canceled`.
    status: String,
    /// Attempts of the current run.
    attempts: i32,
    /// Instances stored.
    instances: i32,
    /// The latest message: failure reason, warning, or why it is retried.
    message: Option<String>,
    /// Started.
    started_at: Option<DateTime<Utc>>,
    /// Finished.
    finished_at: Option<DateTime<Utc>>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<TaskRow> for TransferTaskView {
    fn from(row: TaskRow) -> Self {
        Self {
            task: row.task,
            patient_id: row.patient_id,
            study_instance_uid: row.study_instance_uid,
            series_instance_uids: row.series_instance_uids,
            pseudonym: row.pseudonym,
            status: row.status,
            attempts: row.attempts,
            instances: row.instances,
            message: row.message,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        }
    }
}

/// How many tasks are in one status.
#[derive(SimpleObject)]
pub(crate) struct TaskCount {
    /// The status.
    status: String,
    /// Tasks in it.
    count: i64,
}

#[ComplexObject]
impl TransferJobView {
    /// Its tasks in order. Errors: `VALIDATION` (page size, cursor).
    async fn tasks(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this status.")] status: Option<String>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor (a task number).")] after: Option<String>,
    ) -> Result<Connection<String, TransferTaskView>, ApiError> {
        let size = page_size(first)?;
        let from = match after.as_deref() {
            Some(after) => after.parse::<i32>().map_err(|_| {
                ApiError::Validation("after must be a cursor from this connection".into())
            })?,
            None => 0,
        };
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let rows = transfers::tasks(
            ctx.data_unchecked::<PgPool>(),
            self.id,
            status.as_deref(),
            from,
            limit,
        )
        .await?;
        Ok(connection(rows, size, from > 0, false, |row| {
            (row.task.to_string(), TransferTaskView::from(row))
        }))
    }

    /// Tasks per status.
    async fn task_counts(&self, ctx: &Context<'_>) -> Result<Vec<TaskCount>, ApiError> {
        let counts = transfers::task_counts(ctx.data_unchecked::<PgPool>(), self.id).await?;
        Ok(counts
            .into_iter()
            .map(|(status, count)| TaskCount { status, count })
            .collect())
    }
}

/// The owner filter of a caller: admins see everything.
fn scope(caller: &Caller) -> Option<&str> {
    match caller.authority {
        Authority::Admin => None,
        Authority::Client => Some(caller.actor.as_str()),
    }
}

/// Transfer queries.
#[derive(Default)]
pub(crate) struct TransferQuery;

#[Object]
impl TransferQuery {
    /// Registered DICOM servers.
    async fn dicom_servers(&self, ctx: &Context<'_>) -> Result<Vec<DicomServerView>, ApiError> {
        Caller::from_ctx(ctx)?;
        let rows = transfers::servers(ctx.data_unchecked::<PgPool>()).await?;
        Ok(rows.into_iter().map(DicomServerView::from).collect())
    }

    /// One of your transfer jobs. Errors: `NOT_FOUND`.
    async fn transfer_job(&self, ctx: &Context<'_>, id: Uuid) -> Result<TransferJobView, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        transfers::job(ctx.data_unchecked::<PgPool>(), scope(caller), id)
            .await?
            .map(TransferJobView::from)
            .ok_or(ApiError::NotFound("transfer job"))
    }

    /// Your transfer jobs, newest first. Errors: `VALIDATION` (page size, cursor).
    async fn transfer_jobs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this status.")] status: Option<String>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, TransferJobView>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let size = page_size(first)?;
        let after = keyset_after(after.as_deref())?;
        let limit = i64::try_from(size + 1).unwrap_or(i64::MAX);
        let rows = transfers::jobs(
            ctx.data_unchecked::<PgPool>(),
            scope(caller),
            status.as_deref(),
            after,
            limit,
        )
        .await?;
        Ok(connection(rows, size, after.is_some(), false, |row| {
            (
                KeysetCursor(row.created_at, row.id),
                TransferJobView::from(row),
            )
        }))
    }
}

/// Transfer mutations.
#[derive(Default)]
pub(crate) struct TransferMutation;

#[Object]
impl TransferMutation {
    /// Registers (or updates) a DICOM server (admin). Errors: `FORBIDDEN`, `VALIDATION`.
    async fn register_dicom_server(
        &self,
        ctx: &Context<'_>,
        input: DicomServerInput,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let spec = ServerSpec {
            base_url: input.base_url,
            auth: input.auth.map(|auth| match auth.kind {
                AuthKind::Basic => ServerAuth::Basic {
                    secret_env: auth.secret_env,
                },
                AuthKind::Bearer => ServerAuth::Bearer {
                    secret_env: auth.secret_env,
                },
            }),
        };
        let actions = ctx.data_unchecked::<TransferActions>();
        Ok(actions
            .register_server(
                &caller.command_context(),
                caller.authority,
                input.name,
                spec,
            )
            .await?
            .into())
    }

    /// Removes a DICOM server (admin): new jobs may no longer name it. Errors: `FORBIDDEN`,
    /// `NOT_FOUND`.
    async fn remove_dicom_server(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let actions = ctx.data_unchecked::<TransferActions>();
        Ok(actions
            .remove_server(&caller.command_context(), caller.authority, &name)
            .await?
            .into())
    }

    /// Creates a transfer job, a task per study. The new id is the outcome's `aggregateId`.
    /// Errors: `VALIDATION` (every broken rule, tasks numbered from 1), `CONFLICT`.
    async fn create_transfer_job(
        &self,
        ctx: &Context<'_>,
        setup: TransferSetupInput,
        tasks: Vec<TransferTaskInput>,
        #[graphql(desc = "Retrying with the same key returns the first outcome.")]
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("createTransferJob", &setup, &tasks))?;
        let tasks = tasks
            .into_iter()
            .map(|task| TaskSpec {
                patient_id: task.patient_id,
                study_instance_uid: task.study_instance_uid,
                series_instance_uids: task.series_instance_uids.unwrap_or_default(),
                pseudonym: task.pseudonym,
            })
            .collect();
        create(ctx, setup, tasks, key).await
    }

    /// Creates one transfer job from a CSV (columns `PatientID`, `StudyInstanceUID`,
    /// optional `SeriesInstanceUID` — several separated by `;` — and `Pseudonym`), a task per
    /// row. Every row is checked first: one bad row refuses the whole CSV. Errors:
    /// `VALIDATION` (each problem with its row number; the header is row 1), `CONFLICT`.
    async fn create_transfer_job_from_csv(
        &self,
        ctx: &Context<'_>,
        setup: TransferSetupInput,
        csv: String,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("createTransferJobFromCsv", &setup, &csv))?;
        let tasks =
            csv_rows::parse(&csv).map_err(|problems| ApiError::Validation(problems.join("; ")))?;
        create(ctx, setup, tasks, key).await
    }

    /// Cancels a job: pending tasks at once, running ones as they stop. Errors:
    /// `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn cancel_transfer_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act(
            ctx,
            id,
            JobAction::Cancel,
            idempotency_key,
            "cancelTransferJob",
        )
        .await
    }

    /// Resumes a canceled job: its canceled tasks run again. Errors: `NOT_FOUND`,
    /// `INVALID_TRANSITION`.
    async fn resume_transfer_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act(
            ctx,
            id,
            JobAction::Resume,
            idempotency_key,
            "resumeTransferJob",
        )
        .await
    }

    /// Runs a finished job's failed tasks again. Errors: `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn retry_failed_transfer_tasks(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act(
            ctx,
            id,
            JobAction::RetryFailed,
            idempotency_key,
            "retryFailedTransferTasks",
        )
        .await
    }

    /// Runs every task of a finished job again (admin). Errors: `FORBIDDEN`, `NOT_FOUND`,
    /// `INVALID_TRANSITION`.
    async fn restart_transfer_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act(
            ctx,
            id,
            JobAction::Restart,
            idempotency_key,
            "restartTransferJob",
        )
        .await
    }

    /// Lets an unverified job run (admin). Errors: `FORBIDDEN`, `NOT_FOUND`,
    /// `INVALID_TRANSITION`.
    async fn verify_transfer_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act(
            ctx,
            id,
            JobAction::Verify,
            idempotency_key,
            "verifyTransferJob",
        )
        .await
    }
}

async fn create(
    ctx: &Context<'_>,
    setup: TransferSetupInput,
    tasks: Vec<TaskSpec>,
    key: Option<crate::command::IdempotencyKey>,
) -> Result<CommandOutcome, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let spec = setup.spec(tasks);
    let actions = ctx.data_unchecked::<TransferActions>();
    Ok(actions
        .create(&caller.command_context(), spec, key)
        .await?
        .into())
}

async fn act(
    ctx: &Context<'_>,
    id: Uuid,
    action: JobAction,
    idempotency_key: Option<String>,
    name: &str,
) -> Result<CommandOutcome, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let key = idempotency(idempotency_key, &(name, id))?;
    let actions = ctx.data_unchecked::<TransferActions>();
    Ok(actions
        .act(&caller.command_context(), caller.authority, id, action, key)
        .await?
        .into())
}

/// A change to a transfer job, as it is recorded.
#[derive(SimpleObject)]
pub(crate) struct TransferJobUpdate {
    /// Resume after this update with `after`.
    cursor: String,
    /// The event, e.g. `TransferTaskProgressed`.
    event_type: String,
    /// The job's status after a status change.
    job_status: Option<String>,
    /// The task concerned.
    task: Option<i32>,
    /// The task's status after it.
    task_status: Option<String>,
    /// Instances the task has stored.
    instances: Option<i32>,
    /// The task's message.
    message: Option<String>,
    /// When.
    at: DateTime<Utc>,
}

fn update(cursor: String, event_type: String, event: TransferEvent) -> TransferJobUpdate {
    let at = event.at();
    let number = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let mut update = TransferJobUpdate {
        cursor,
        event_type,
        job_status: None,
        task: None,
        task_status: None,
        instances: None,
        message: None,
        at,
    };
    match event {
        TransferEvent::StatusChanged { to, .. } => update.job_status = Some(to.as_str().into()),
        TransferEvent::TaskStarted { task, .. } => {
            update.task = number(task);
            update.task_status = Some("in_progress".into());
            update.instances = Some(0);
        }
        TransferEvent::TaskProgressed {
            task,
            count: instances,
            ..
        } => {
            update.task = number(task);
            update.instances = number(instances);
        }
        TransferEvent::TaskFinished {
            task,
            status,
            message,
            count: instances,
            ..
        } => {
            update.task = number(task);
            update.task_status = Some(status.as_str().into());
            update.instances = number(instances);
            update.message = message;
        }
        TransferEvent::TaskRetryScheduled { task, reason, .. }
        | TransferEvent::TaskInterrupted { task, reason, .. } => {
            update.task = number(task);
            update.task_status = Some("pending".into());
            update.message = Some(reason);
        }
        TransferEvent::Created { .. }
        | TransferEvent::Verified { .. }
        | TransferEvent::CancelRequested { .. }
        | TransferEvent::TasksRequeued { .. } => {}
    }
    update
}

/// Transfer subscriptions.
#[derive(Default)]
pub(crate) struct TransferSubscription;

#[Subscription]
impl TransferSubscription {
    /// Every change to one of your transfer jobs — status changes and task progress — from
    /// its creation (or after `after`), then live. Errors: `NOT_FOUND`, `VALIDATION`.
    async fn transfer_job_updated(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(desc = "Resume after this cursor; from the job's first event when omitted.")]
        after: Option<String>,
    ) -> Result<impl Stream<Item = TransferJobUpdate>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        ctx.data_unchecked::<TransferActions>()
            .visible(&caller.command_context(), caller.authority, id)
            .await?;
        let start: LogCursor = match after {
            Some(after) => after.parse()?,
            None => LogCursor::START,
        };
        let filter = LogFilter {
            aggregate_types: Some(vec!["TransferJob".to_owned()]),
            aggregate_id: Some(id.to_string()),
            ..LogFilter::default()
        };
        let reader = ctx.data_unchecked::<LogReader>().clone();
        let stream = tail(reader, ctx.data_unchecked::<LogWaker>(), start, filter);
        Ok(stream.filter_map(|event| async move {
            let cursor = event.cursor.to_string();
            let event_type = event.event_type.clone();
            let decoded = event.decode::<TransferEvent>().ok()?;
            Some(update(cursor, event_type, decoded))
        }))
    }
}
