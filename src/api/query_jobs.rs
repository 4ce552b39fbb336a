//! Query jobs (batch queries) over GraphQL: rows of criteria searched at a source server, the
//! studies found (also as CSV), and a transfer job made from them.

use async_graphql::connection::Connection;
use async_graphql::{ComplexObject, Context, InputObject, Json, Object, SimpleObject};
use chronicle_aggregates::query::{Query, QuerySpec, StudyQuery};
use chronicle_aggregates::transfer::TaskSpec;
use chronicle_projections::queries::{self, QueryJobRow, QueryResultRow, QueryTaskRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::outcome::{idempotency, CommandOutcome};
use super::pagination::{connection, keyset_page, KeysetCursor, KeysetPage};
use super::transfers::{act, create, TransferSetupInput};
use super::{ApiError, Caller};
use crate::reads::Reads;
use crate::transfer::{csv_rows, JobAction, TransferActions};

/// One row of search criteria: every given criterion must match.
#[derive(InputObject, Serialize)]
pub(crate) struct StudyQueryInput {
    /// PatientID.
    patient_id: Option<String>,
    /// PatientName; `*` and `?` are wildcards.
    patient_name: Option<String>,
    /// PatientBirthDate, `YYYYMMDD`.
    patient_birth_date: Option<String>,
    /// AccessionNumber.
    accession_number: Option<String>,
    /// StudyDate from, `YYYYMMDD`.
    study_date_from: Option<String>,
    /// StudyDate to, `YYYYMMDD`.
    study_date_to: Option<String>,
    /// ModalitiesInStudy: any of these.
    modalities: Option<Vec<String>>,
    /// StudyDescription; `*` and `?` are wildcards.
    study_description: Option<String>,
}

impl From<StudyQueryInput> for StudyQuery {
    fn from(input: StudyQueryInput) -> Self {
        Self {
            patient_id: input.patient_id,
            patient_name: input.patient_name,
            patient_birth_date: input.patient_birth_date,
            accession_number: input.accession_number,
            study_date_from: input.study_date_from,
            study_date_to: input.study_date_to,
            modalities: input.modalities.unwrap_or_default(),
            study_description: input.study_description,
        }
    }
}

/// A query job.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct QueryJobView {
    /// The job's id.
    id: Uuid,
    /// The owning client.
    owner: String,
    /// The server searched.
    source: String,
    /// Derived from its tasks, like a transfer job's.
    status: String,
    /// Rows of criteria.
    task_count: i32,
    /// Studies found by all rows.
    matches_found: i64,
    /// The admin who verified it.
    verified_by: Option<String>,
    /// Stream version reflected.
    version: i64,
    /// Created.
    created_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<QueryJobRow> for QueryJobView {
    fn from(row: QueryJobRow) -> Self {
        Self {
            id: row.id,
            owner: row.owner,
            source: row.source,
            status: row.status,
            task_count: row.task_count,
            matches_found: row.matches_found,
            verified_by: row.verified_by,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// One row of criteria and how its search went.
#[derive(SimpleObject)]
pub(crate) struct QueryTaskView {
    /// Its number (the row's order), from 1.
    task: i32,
    /// The criteria.
    criteria: Json<Value>,
    /// `pending`, `in_progress`, `success`, `warning`, `failure` or `canceled`.
    status: String,
    /// Attempts of the current run.
    attempts: i32,
    /// Studies found.
    matches: i32,
    /// The latest message (no match, too many, the failure).
    message: Option<String>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<QueryTaskRow> for QueryTaskView {
    fn from(row: QueryTaskRow) -> Self {
        Self {
            task: row.task,
            criteria: Json(row.criteria),
            status: row.status,
            attempts: row.attempts,
            matches: row.matches,
            message: row.message,
            updated_at: row.updated_at,
        }
    }
}

/// A study a row found.
#[derive(SimpleObject)]
pub(crate) struct StudyMatchView {
    /// The row that found it.
    task: i32,
    /// StudyInstanceUID.
    study_instance_uid: String,
    /// PatientID.
    patient_id: String,
    /// StudyDate.
    study_date: Option<String>,
    /// ModalitiesInStudy.
    modalities: Vec<String>,
    /// StudyDescription.
    description: Option<String>,
    /// Series in the study.
    series: Option<i32>,
    /// Instances in the study.
    instances: Option<i32>,
}

impl From<QueryResultRow> for StudyMatchView {
    fn from(row: QueryResultRow) -> Self {
        Self {
            task: row.task,
            study_instance_uid: row.study_instance_uid,
            patient_id: row.patient_id,
            study_date: row.study_date,
            modalities: row.modalities,
            description: row.description,
            series: row.series,
            instances: row.instances,
        }
    }
}

/// The studies as CSV: a header, then one line per study.
fn results_csv(rows: &[QueryResultRow]) -> Result<String, ApiError> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let failed = |e: csv::Error| ApiError::Validation(format!("cannot write the CSV: {e}"));
    writer
        .write_record([
            "Row",
            "PatientID",
            "StudyInstanceUID",
            "StudyDate",
            "Modalities",
            "StudyDescription",
            "Series",
            "Instances",
        ])
        .map_err(failed)?;
    for row in rows {
        let number = |n: Option<i32>| n.map(|n| n.to_string()).unwrap_or_default();
        writer
            .write_record([
                row.task.to_string(),
                row.patient_id.clone(),
                row.study_instance_uid.clone(),
                row.study_date.clone().unwrap_or_default(),
                row.modalities.join(";"),
                row.description.clone().unwrap_or_default(),
                number(row.series),
                number(row.instances),
            ])
            .map_err(failed)?;
    }
    let bytes = writer
        .into_inner()
        .map_err(|e| ApiError::Validation(format!("cannot write the CSV: {e}")))?;
    String::from_utf8(bytes).map_err(|e| ApiError::Validation(e.to_string()))
}

#[ComplexObject]
impl QueryJobView {
    /// Its rows of criteria, in order.
    async fn tasks(&self, ctx: &Context<'_>) -> Result<Vec<QueryTaskView>, ApiError> {
        let rows = queries::tasks(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        Ok(rows.into_iter().map(QueryTaskView::from).collect())
    }

    /// The studies found, by row.
    async fn results(&self, ctx: &Context<'_>) -> Result<Vec<StudyMatchView>, ApiError> {
        let rows = queries::results_of(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        Ok(rows.into_iter().map(StudyMatchView::from).collect())
    }

    /// The studies found as CSV (`Row`, `PatientID`, `StudyInstanceUID`, `StudyDate`,
    /// `Modalities`, `StudyDescription`, `Series`, `Instances`) — readable by
    /// `createTransferJobFromCsv` as it is.
    async fn results_csv(&self, ctx: &Context<'_>) -> Result<String, ApiError> {
        let rows = queries::results_of(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        results_csv(&rows)
    }
}

/// Query job queries.
#[derive(Default)]
pub(crate) struct QueryJobQuery;

#[Object]
impl QueryJobQuery {
    /// One of your query jobs. Errors: `NOT_FOUND`.
    async fn query_job(&self, ctx: &Context<'_>, id: Uuid) -> Result<QueryJobView, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        queries::job(&ctx.data_unchecked::<Reads>().pool, caller.scope(), id)
            .await?
            .map(QueryJobView::from)
            .ok_or(ApiError::NotFound("query job"))
    }

    /// Your query jobs, newest first. Errors: `VALIDATION` (page size, cursor).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn query_jobs(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this status.")] status: Option<String>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, QueryJobView>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let KeysetPage { size, after, limit } = keyset_page(first, after.as_deref())?;
        let rows = queries::jobs(
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
                QueryJobView::from(row),
            )
        }))
    }
}

/// Query job mutations.
#[derive(Default)]
pub(crate) struct QueryJobMutation;

#[Object]
impl QueryJobMutation {
    /// Creates a query job, a task per row of criteria, searched at `source`. Errors:
    /// `VALIDATION` (every broken rule, rows numbered from 1), `CONFLICT`.
    async fn create_query_job(
        &self,
        ctx: &Context<'_>,
        source: String,
        queries: Vec<StudyQueryInput>,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("createQueryJob", &source, &queries))?;
        let queries = queries.into_iter().map(StudyQuery::from).collect();
        create_query(ctx, source, queries, key).await
    }

    /// Creates a query job from a CSV of criteria (columns, any of: `PatientID`,
    /// `PatientName`, `PatientBirthDate`, `AccessionNumber`, `StudyDate` as a date or
    /// `from-to`, `Modalities` joined by `;`, `StudyDescription`). One bad row refuses the
    /// CSV. Errors: `VALIDATION` (each problem with its row number), `CONFLICT`.
    async fn create_query_job_from_csv(
        &self,
        ctx: &Context<'_>,
        source: String,
        csv: String,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("createQueryJobFromCsv", &source, &csv))?;
        let queries = csv_rows::parse_queries(&csv)
            .map_err(|problems| ApiError::Validation(problems.join("; ")))?;
        create_query(ctx, source, queries, key).await
    }

    /// Creates a transfer job of the studies a finished query job found (each once), from
    /// the server it searched. Errors: `NOT_FOUND`, `INVALID_TRANSITION` (still running, or
    /// nothing found), `VALIDATION` (another source, more studies than a job holds).
    async fn create_transfer_job_from_query(
        &self,
        ctx: &Context<'_>,
        query_job_id: Uuid,
        setup: TransferSetupInput,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let key = idempotency(
            idempotency_key,
            &("createTransferJobFromQuery", query_job_id, &setup),
        )?;
        let pool = ctx.data_unchecked::<PgPool>();
        let job = queries::job(pool, caller.scope(), query_job_id)
            .await?
            .ok_or(ApiError::NotFound("query job"))?;
        if setup.source != job.source {
            return Err(ApiError::Validation(format!(
                "the transfer's source must be the server the query searched ({})",
                job.source
            )));
        }
        let mut seen = std::collections::HashSet::new();
        let mut tasks: Vec<TaskSpec> = Vec::new();
        for found in queries::results_of(pool, query_job_id).await? {
            if seen.insert(found.study_instance_uid.clone()) {
                tasks.push(TaskSpec {
                    patient_id: found.patient_id,
                    study_instance_uid: found.study_instance_uid,
                    series_instance_uids: Vec::new(),
                    pseudonym: None,
                });
            }
        }
        if !matches!(job.status.as_str(), "success" | "warning" | "failure") || tasks.is_empty() {
            return Err(ApiError::Command(crate::command::CommandError::Rejected {
                code: chronicle_aggregates::ErrorCode::InvalidTransition,
                message: format!(
                    "a {} query job with {} studies found cannot become a transfer job",
                    job.status,
                    tasks.len()
                ),
            }));
        }
        create(ctx, setup, tasks, key).await
    }

    /// Cancels a query job. Errors: `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn cancel_query_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act::<Query>(
            ctx,
            id,
            JobAction::Cancel,
            idempotency_key,
            "cancelQueryJob",
        )
        .await
    }

    /// Resumes a canceled query job. Errors: `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn resume_query_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act::<Query>(
            ctx,
            id,
            JobAction::Resume,
            idempotency_key,
            "resumeQueryJob",
        )
        .await
    }

    /// Runs a finished query job's failed rows again. Errors: `NOT_FOUND`,
    /// `INVALID_TRANSITION`.
    async fn retry_failed_query_tasks(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let name = "retryFailedQueryTasks";
        act::<Query>(ctx, id, JobAction::RetryFailed, idempotency_key, name).await
    }

    /// Lets an unverified query job run (admin). Errors: `FORBIDDEN`, `NOT_FOUND`,
    /// `INVALID_TRANSITION`.
    async fn verify_query_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act::<Query>(
            ctx,
            id,
            JobAction::Verify,
            idempotency_key,
            "verifyQueryJob",
        )
        .await
    }

    /// Runs every row of a finished query job again (admin). Errors: `FORBIDDEN`,
    /// `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn restart_query_job(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        act::<Query>(
            ctx,
            id,
            JobAction::Restart,
            idempotency_key,
            "restartQueryJob",
        )
        .await
    }
}

async fn create_query(
    ctx: &Context<'_>,
    source: String,
    queries: Vec<StudyQuery>,
    key: Option<crate::command::IdempotencyKey>,
) -> Result<CommandOutcome, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let actions = ctx.data_unchecked::<TransferActions>();
    let spec = QuerySpec { source, queries };
    Ok(actions
        .create_query(&caller.command_context(), caller.authority, spec, key)
        .await?
        .into())
}
