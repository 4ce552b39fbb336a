//! `query_jobs`, `query_tasks` and `query_results`, from the query job streams: the rows of
//! criteria and the studies each found. Applied event by event.

use async_trait::async_trait;
use chronicle_aggregates::query::{QueryEvent, QuerySpec, StudyMatch};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::jobs::{apply_lifecycle, number, JobTables};
use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the query job tables.
#[derive(Debug, Default, Clone, Copy)]
pub struct Queries;

const TABLES: JobTables = JobTables {
    jobs: "query_jobs",
    tasks: "query_tasks",
    count: "matches",
    total: "matches_found",
};

#[async_trait]
impl Projector for Queries {
    fn name(&self) -> &'static str {
        "queries"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["QueryJob"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["query_jobs", "query_tasks", "query_results"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| e.aggregate_type == "QueryJob") {
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            apply(conn, id, event.sequence, event.decode()?).await?;
        }
        Ok(())
    }
}

async fn apply(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    event: QueryEvent,
) -> Result<(), sqlx::Error> {
    if let QueryEvent::Created {
        owner,
        spec,
        verified,
        at,
        ..
    } = &event
    {
        created(conn, id, version, owner, spec, *verified, *at).await?;
    }
    // A new run replaces what the task found before.
    if let QueryEvent::TaskStarted { task, .. } = &event {
        sqlx::query("DELETE FROM query_results WHERE job_id = $1 AND task = $2")
            .bind(id)
            .bind(number(*task))
            .execute(&mut *conn)
            .await?;
    }
    if let QueryEvent::TaskFinished {
        task,
        output: Some(found),
        ..
    } = &event
    {
        results(conn, id, *task, found).await?;
    }
    apply_lifecycle(conn, &TABLES, id, version, &event).await
}

async fn created(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    owner: &str,
    spec: &QuerySpec,
    verified: bool,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO query_jobs (id, owner, source, status, task_count, version, created_at,
                                 updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
    )
    .bind(id)
    .bind(owner)
    .bind(&spec.source)
    .bind(if verified { "pending" } else { "unverified" })
    .bind(i32::try_from(spec.queries.len()).unwrap_or(i32::MAX))
    .bind(version)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let criteria: Vec<serde_json::Value> = spec
        .queries
        .iter()
        .map(|q| serde_json::to_value(q).unwrap_or_default())
        .collect();
    sqlx::query(
        "INSERT INTO query_tasks (job_id, task, criteria, status, updated_at)
         SELECT $1, n::int, c, 'pending', $3
           FROM unnest($2::jsonb[]) WITH ORDINALITY AS t(c, n)",
    )
    .bind(id)
    .bind(criteria)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

async fn results(
    conn: &mut PgConnection,
    id: Uuid,
    task: u32,
    found: &[StudyMatch],
) -> Result<(), sqlx::Error> {
    for study in found {
        sqlx::query(
            "INSERT INTO query_results (job_id, task, study_instance_uid, patient_id, study_date,
                                        modalities, description, series, instances)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(number(task))
        .bind(&study.study_instance_uid)
        .bind(&study.patient_id)
        .bind(&study.study_date)
        .bind(&study.modalities)
        .bind(&study.description)
        .bind(study.series.map(number))
        .bind(study.instances.map(number))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// A row of `query_jobs`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueryJobRow {
    /// The job's id.
    pub id: Uuid,
    /// The owning client.
    pub owner: String,
    /// The server searched.
    pub source: String,
    /// Derived status.
    pub status: String,
    /// Rows of criteria.
    pub task_count: i32,
    /// Studies found by all rows.
    pub matches_found: i64,
    /// The admin who verified it.
    pub verified_by: Option<String>,
    /// Stream version reflected.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Query job `id`, if `owner` (or anyone, for `None`) owns it.
///
/// # Errors
/// The database failed.
pub async fn job(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    id: Uuid,
) -> Result<Option<QueryJobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, owner, source, status, task_count, matches_found, verified_by, version,
                created_at, updated_at
           FROM query_jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
    )
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await
}

/// A row of `query_tasks`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct QueryTaskRow {
    /// Its number (the CSV row's order), from 1.
    pub task: i32,
    /// The criteria.
    pub criteria: serde_json::Value,
    /// Its status.
    pub status: String,
    /// Attempts of the current run.
    pub attempts: i32,
    /// Studies found.
    pub matches: i32,
    /// The latest message.
    pub message: Option<String>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The tasks of query job `id`, in order.
///
/// # Errors
/// The database failed.
pub async fn tasks(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<QueryTaskRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT task, criteria, status, attempts, matches, message, updated_at
           FROM query_tasks WHERE job_id = $1 ORDER BY task",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// A row of `query_results`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct QueryResultRow {
    /// The row that found it.
    pub task: i32,
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// PatientID.
    pub patient_id: String,
    /// StudyDate.
    pub study_date: Option<String>,
    /// ModalitiesInStudy.
    pub modalities: Vec<String>,
    /// StudyDescription.
    pub description: Option<String>,
    /// Series in the study.
    pub series: Option<i32>,
    /// Instances in the study.
    pub instances: Option<i32>,
}

/// The studies query job `id` found, by task then study.
///
/// # Errors
/// The database failed.
pub async fn results_of(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Vec<QueryResultRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT task, study_instance_uid, patient_id, study_date, modalities, description,
                series, instances
           FROM query_results WHERE job_id = $1 ORDER BY task, study_instance_uid",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// Query jobs of `owner` (all for `None`), newest first, after the keyset `after`.
///
/// # Errors
/// The database failed.
pub async fn jobs(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<QueryJobRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, owner, source, status, task_count, matches_found, verified_by, version,
                created_at, updated_at
           FROM query_jobs
          WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
          ORDER BY created_at DESC, id DESC LIMIT $5",
    )
    .bind(owner)
    .bind(status)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(db)
    .await
}
