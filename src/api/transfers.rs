//! Transfer jobs over GraphQL: DICOM servers (admin), jobs from a task list or a CSV,
//! cancel/resume/retry/restart/verify, jobs with their task connections, live updates.

use async_graphql::connection::Connection;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use chronicle_aggregates::job::JobKind;
use chronicle_aggregates::transfer::{TaskSpec, Transfer, TransferSpec, TrialProtocol};
use chronicle_projections::transfers::{self, JobRow, TaskRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::outcome::{idempotency, CommandOutcome};
use super::pagination::{connection, keyset_page, page_size, KeysetCursor, KeysetPage};
use super::{ApiError, Caller};
use crate::reads::Reads;
use crate::transfer::{csv_rows, JobAction, TransferActions};

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
    pub(crate) source: String,
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
    pub(crate) fn spec(self, tasks: Vec<TaskSpec>) -> TransferSpec {
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
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
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
            &ctx.data_unchecked::<Reads>().pool,
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
        let counts = transfers::task_counts(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        Ok(counts
            .into_iter()
            .map(|(status, count)| TaskCount { status, count })
            .collect())
    }
}

/// Transfer queries.
#[derive(Default)]
pub(crate) struct TransferQuery;

#[Object]
impl TransferQuery {
    /// One of your transfer jobs. Errors: `NOT_FOUND`.
    async fn transfer_job(&self, ctx: &Context<'_>, id: Uuid) -> Result<TransferJobView, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        transfers::job(&ctx.data_unchecked::<Reads>().pool, caller.scope(), id)
            .await?
            .map(TransferJobView::from)
            .ok_or(ApiError::NotFound("transfer job"))
    }

    /// Your transfer jobs, newest first. Errors: `VALIDATION` (page size, cursor).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn transfer_jobs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this status.")] status: Option<String>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, TransferJobView>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let KeysetPage { size, after, limit } = keyset_page(first, after.as_deref())?;
        let rows = transfers::jobs(
            &ctx.data_unchecked::<Reads>().pool,
            caller.scope(),
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
        act::<Transfer>(
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
        act::<Transfer>(
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
        act::<Transfer>(
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
        act::<Transfer>(
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
        act::<Transfer>(
            ctx,
            id,
            JobAction::Verify,
            idempotency_key,
            "verifyTransferJob",
        )
        .await
    }
}

/// Creates a transfer job of `tasks` set up as `setup` for the caller.
pub(crate) async fn create(
    ctx: &Context<'_>,
    setup: TransferSetupInput,
    tasks: Vec<TaskSpec>,
    key: Option<crate::command::IdempotencyKey>,
) -> Result<CommandOutcome, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let spec = setup.spec(tasks);
    let actions = ctx.data_unchecked::<TransferActions>();
    Ok(actions
        .create(&caller.command_context(), caller.authority, spec, key)
        .await?
        .into())
}

/// Runs `action` on job `id` of kind `K` for the caller; `name` fingerprints the key.
pub(crate) async fn act<K: JobKind>(
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
        .act::<K>(&caller.command_context(), caller.authority, id, action, key)
        .await?
        .into())
}
