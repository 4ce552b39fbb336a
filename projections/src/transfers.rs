//! `dicom_servers`, `transfer_jobs`, `transfer_tasks` and `analytics.transfer_daily`, from
//! the DICOM server and transfer job streams. Applied event by event.

use async_trait::async_trait;
use chronicle_aggregates::dicom_server::{DicomServerEvent, ServerAuth};
use chronicle_aggregates::transfer::{TaskStatus, TransferEvent, TransferSpec};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::jobs::{apply_lifecycle, JobTables};
use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the transfer tables.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transfers;

#[async_trait]
impl Projector for Transfers {
    fn name(&self) -> &'static str {
        "transfers"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["TransferJob", "DicomServer", "Subject"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "dicom_servers",
            "transfer_jobs",
            "transfer_tasks",
            "analytics.transfer_daily",
        ]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            match event.aggregate_type.as_str() {
                "DicomServer" => apply_server(conn, event, event.decode()?).await?,
                "TransferJob" => {
                    let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                        continue;
                    };
                    apply_job(conn, id, event.sequence, event.decode()?).await?;
                }
                "Subject" if event.event_type == "SubjectForgotten" => {
                    erase(conn, &event.aggregate_id).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Erases, at once, the patient id and pseudonym of every task of a forgotten patient (a
/// rebuild shows the same fields erased, read from the sealed events).
async fn erase(conn: &mut PgConnection, subject_ref: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE transfer_tasks t
            SET patient_id = '[erased]',
                pseudonym = CASE WHEN t.pseudonym IS NULL THEN NULL ELSE '[erased]' END
           FROM aggregate_subjects a
          WHERE a.aggregate_type = 'TransferJob' AND a.subject_ref = $1 AND a.element > 0
            AND t.job_id = a.aggregate_id::uuid AND t.task = a.element",
    )
    .bind(subject_ref)
    .execute(conn)
    .await?;
    Ok(())
}

async fn apply_server(
    conn: &mut PgConnection,
    recorded: &RecordedEvent,
    event: DicomServerEvent,
) -> Result<(), sqlx::Error> {
    match event {
        DicomServerEvent::Registered { name, spec, at, .. } => {
            let (kind, env) = match spec.auth {
                Some(ServerAuth::Basic { secret_env }) => (Some("basic"), Some(secret_env)),
                Some(ServerAuth::Bearer { secret_env }) => (Some("bearer"), Some(secret_env)),
                None => (None, None),
            };
            sqlx::query(
                "INSERT INTO dicom_servers (name, base_url, auth_kind, auth_secret_env, version,
                                            registered_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $6)
                 ON CONFLICT (name) DO UPDATE
                    SET base_url = $2, auth_kind = $3, auth_secret_env = $4, removed = false,
                        version = $5, updated_at = $6",
            )
            .bind(name)
            .bind(spec.base_url)
            .bind(kind)
            .bind(env)
            .bind(recorded.sequence)
            .bind(at)
            .execute(conn)
            .await?;
        }
        DicomServerEvent::Removed { at, .. } => {
            sqlx::query(
                "UPDATE dicom_servers SET removed = true, version = $2, updated_at = $3
                  WHERE name = $1",
            )
            .bind(&recorded.aggregate_id)
            .bind(recorded.sequence)
            .bind(at)
            .execute(conn)
            .await?;
        }
    }
    Ok(())
}

const TABLES: JobTables = JobTables {
    jobs: "transfer_jobs",
    tasks: "transfer_tasks",
    count: "instances",
    total: "instances_moved",
};

async fn apply_job(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    event: TransferEvent,
) -> Result<(), sqlx::Error> {
    if let TransferEvent::Created {
        owner,
        spec,
        verified,
        at,
        ..
    } = &event
    {
        created(conn, id, version, owner, spec, *verified, *at).await?;
    }
    apply_lifecycle(conn, &TABLES, id, version, &event).await?;
    if let TransferEvent::TaskFinished { status, count, .. } = &event {
        throughput(conn, id, *status, *count, event.at()).await?;
    }
    Ok(())
}

/// Inserts a new job's row and its tasks' rows.
async fn created(
    conn: &mut PgConnection,
    id: Uuid,
    version: i64,
    owner: &str,
    spec: &TransferSpec,
    verified: bool,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO transfer_jobs (id, owner, source, destination, status, pseudonymize,
                     urgent, protocol_id, protocol_name, task_count, version, created_at,
                     updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
    )
    .bind(id)
    .bind(owner)
    .bind(&spec.source)
    .bind(&spec.destination)
    .bind(if verified { "pending" } else { "unverified" })
    .bind(spec.pseudonymize)
    .bind(spec.urgent)
    .bind(spec.protocol.as_ref().map(|p| p.id.clone()))
    .bind(spec.protocol.as_ref().and_then(|p| p.name.clone()))
    .bind(i32::try_from(spec.tasks.len()).unwrap_or(i32::MAX))
    .bind(version)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    let mut numbers = Vec::new();
    let mut patients = Vec::new();
    let mut studies = Vec::new();
    let mut series = Vec::new();
    let mut pseudonyms = Vec::new();
    for (n, task) in (1_i32..).zip(&spec.tasks) {
        numbers.push(n);
        patients.push(task.patient_id.clone());
        studies.push(task.study_instance_uid.clone());
        // Postgres arrays of arrays must be rectangular: series travel as JSON.
        series.push(serde_json::to_string(&task.series_instance_uids).unwrap_or_default());
        pseudonyms.push(task.pseudonym.clone());
    }
    sqlx::query(
        "INSERT INTO transfer_tasks (job_id, task, patient_id, study_instance_uid,
                     series_instance_uids, pseudonym, status, updated_at)
                 SELECT $1, n, p, s,
                        ARRAY(SELECT jsonb_array_elements_text(se::jsonb)), ps, 'pending', $7
                   FROM unnest($2::int[], $3::text[], $4::text[], $5::text[], $6::text[])
                        AS t(n, p, s, se, ps)",
    )
    .bind(id)
    .bind(numbers)
    .bind(patients)
    .bind(studies)
    .bind(series)
    .bind(pseudonyms)
    .bind(at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counts a finished task toward its owner's server pair and day.
async fn throughput(
    conn: &mut PgConnection,
    id: Uuid,
    status: TaskStatus,
    instances: u32,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let moved = matches!(status, TaskStatus::Success | TaskStatus::Warning);
    sqlx::query(
        "INSERT INTO transfer_daily (owner, source, destination, day, studies,
                                               instances, failures, canceled)
         SELECT owner, source, destination, ($2 AT TIME ZONE 'UTC')::date, $3, $4, $5, $6
           FROM transfer_jobs WHERE id = $1
         ON CONFLICT (owner, source, destination, day) DO UPDATE
            SET studies = transfer_daily.studies + excluded.studies,
                instances = transfer_daily.instances + excluded.instances,
                failures = transfer_daily.failures + excluded.failures,
                canceled = transfer_daily.canceled + excluded.canceled",
    )
    .bind(id)
    .bind(at)
    .bind(i64::from(moved))
    .bind(if moved { i64::from(instances) } else { 0 })
    .bind(i64::from(status == TaskStatus::Failure))
    .bind(i64::from(status == TaskStatus::Canceled))
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of `transfer_jobs`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JobRow {
    /// The job's id.
    pub id: Uuid,
    /// The owning client.
    pub owner: String,
    /// Source server.
    pub source: String,
    /// Destination server.
    pub destination: String,
    /// Derived status.
    pub status: String,
    /// Pseudonymized on the way.
    pub pseudonymize: bool,
    /// Runs first.
    pub urgent: bool,
    /// Trial protocol id stamped.
    pub protocol_id: Option<String>,
    /// Trial protocol name stamped.
    pub protocol_name: Option<String>,
    /// Tasks.
    pub task_count: i32,
    /// Instances stored so far.
    pub instances_moved: i64,
    /// The admin who verified it.
    pub verified_by: Option<String>,
    /// Stream version reflected.
    pub version: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

const JOB_COLUMNS: &str = "id, owner, source, destination, status, pseudonymize, urgent,
    protocol_id, protocol_name, task_count, instances_moved, verified_by, version, created_at,
    updated_at";

/// Job `id`, if `owner` (or anyone, for `None`) owns it.
///
/// # Errors
/// The database failed.
pub async fn job(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    id: Uuid,
) -> Result<Option<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM transfer_jobs
          WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await
}

/// Jobs of `owner` (all for `None`), newest first, after the keyset `after`.
///
/// # Errors
/// The database failed.
pub async fn jobs(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    status: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<JobRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {JOB_COLUMNS} FROM transfer_jobs
          WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
          ORDER BY created_at DESC, id DESC LIMIT $5"
    ))
    .bind(owner)
    .bind(status)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A row of `transfer_tasks`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TaskRow {
    /// Its number in the job, from 1.
    pub task: i32,
    /// Patient at the source.
    pub patient_id: String,
    /// The study.
    pub study_instance_uid: String,
    /// Only these series (all when empty).
    pub series_instance_uids: Vec<String>,
    /// The task's own pseudonym.
    pub pseudonym: Option<String>,
    /// Its status.
    pub status: String,
    /// Attempts of the current run.
    pub attempts: i32,
    /// Instances stored.
    pub instances: i32,
    /// The latest message (failure reason, warning, retry reason).
    pub message: Option<String>,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Tasks of job `id` numbered after `after`, in order.
///
/// # Errors
/// The database failed.
pub async fn tasks(
    db: impl PgExecutor<'_>,
    id: Uuid,
    status: Option<&str>,
    after: i32,
    limit: i64,
) -> Result<Vec<TaskRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT task, patient_id, study_instance_uid, series_instance_uids, pseudonym, status,
                attempts, instances, message, started_at, finished_at, updated_at
           FROM transfer_tasks
          WHERE job_id = $1 AND task > $2 AND ($3::text IS NULL OR status = $3)
          ORDER BY task LIMIT $4",
    )
    .bind(id)
    .bind(after)
    .bind(status)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Tasks of job `id` per status.
///
/// # Errors
/// The database failed.
pub async fn task_counts(
    db: impl PgExecutor<'_>,
    id: Uuid,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, count(*) FROM transfer_tasks WHERE job_id = $1
          GROUP BY status ORDER BY status",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// A row of `dicom_servers`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ServerRow {
    /// Its name.
    pub name: String,
    /// DICOMweb base URL.
    pub base_url: String,
    /// `basic`, `bearer` or none.
    pub auth_kind: Option<String>,
    /// The variable holding the credentials.
    pub auth_secret_env: Option<String>,
    /// Registered.
    pub registered_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// Registered (not removed) servers by name.
///
/// # Errors
/// The database failed.
pub async fn servers(db: impl PgExecutor<'_>) -> Result<Vec<ServerRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, base_url, auth_kind, auth_secret_env, registered_at, updated_at
           FROM dicom_servers WHERE NOT removed ORDER BY name",
    )
    .fetch_all(db)
    .await
}
