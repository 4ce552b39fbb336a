//! What every job event does to a job's row and its tasks' rows, whatever the kind (transfer
//! or query): the kind's projector inserts the rows on creation and adds its own part.

use chronicle_aggregates::job::{JobEvent, JobKind, Requeue, TaskStatus};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use uuid::Uuid;

/// The tables of one kind of job.
pub(crate) struct JobTables {
    /// The jobs table, e.g. `transfer_jobs`.
    pub jobs: &'static str,
    /// The tasks table, e.g. `transfer_tasks`.
    pub tasks: &'static str,
    /// The tasks' count column, e.g. `instances`.
    pub count: &'static str,
    /// The jobs' column summing it, e.g. `instances_moved`.
    pub total: &'static str,
}

/// A task number as stored.
pub(crate) fn number(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// Applies the lifecycle part of `event` (everything but creating the rows), then stamps
/// the job's version, time and total.
pub(crate) async fn apply_lifecycle<K: JobKind>(
    conn: &mut PgConnection,
    tables: &JobTables,
    id: Uuid,
    version: i64,
    event: &JobEvent<K>,
) -> Result<(), sqlx::Error> {
    let JobTables {
        jobs,
        tasks,
        count,
        total,
    } = tables;
    let at = event.at();
    match event {
        JobEvent::Created { .. } => {}
        JobEvent::Verified { by, .. } => {
            sqlx::query(&format!("UPDATE {jobs} SET verified_by = $2 WHERE id = $1"))
                .bind(id)
                .bind(by)
                .execute(&mut *conn)
                .await?;
        }
        JobEvent::TaskStarted { task, attempt, .. } => {
            sqlx::query(&format!(
                "UPDATE {tasks} SET status = 'in_progress', attempts = $3, {count} = 0,
                        message = NULL, retry_at = NULL, started_at = $4, finished_at = NULL,
                        updated_at = $4
                  WHERE job_id = $1 AND task = $2"
            ))
            .bind(id)
            .bind(number(*task))
            .bind(number(*attempt))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        JobEvent::TaskProgressed { task, count, .. } => {
            set_task(conn, tables, id, *task, None, Some(*count), None, at).await?;
        }
        JobEvent::TaskFinished {
            task,
            status,
            message,
            count,
            ..
        } => {
            let message = message.clone();
            set_task(
                conn,
                tables,
                id,
                *task,
                Some(*status),
                Some(*count),
                message,
                at,
            )
            .await?;
            sqlx::query(&format!(
                "UPDATE {tasks} SET finished_at = $3 WHERE job_id = $1 AND task = $2"
            ))
            .bind(id)
            .bind(number(*task))
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        JobEvent::TaskRetryScheduled { task, reason, .. }
        | JobEvent::TaskInterrupted { task, reason, .. } => {
            let pending = Some(TaskStatus::Pending);
            set_task(
                conn,
                tables,
                id,
                *task,
                pending,
                None,
                Some(reason.clone()),
                at,
            )
            .await?;
            if let JobEvent::TaskRetryScheduled { retry_at, .. } = event {
                sqlx::query(&format!(
                    "UPDATE {tasks} SET retry_at = $3 WHERE job_id = $1 AND task = $2"
                ))
                .bind(id)
                .bind(number(*task))
                .bind(retry_at)
                .execute(&mut *conn)
                .await?;
            }
        }
        JobEvent::CancelRequested { canceled, .. } => {
            requeue(conn, tables, id, canceled, TaskStatus::Canceled, false, at).await?;
        }
        JobEvent::TasksRequeued {
            tasks: requeued,
            reason,
            ..
        } => {
            let restart = *reason == Requeue::Restart;
            requeue(conn, tables, id, requeued, TaskStatus::Pending, restart, at).await?;
        }
        JobEvent::StatusChanged { to, .. } => {
            sqlx::query(&format!("UPDATE {jobs} SET status = $2 WHERE id = $1"))
                .bind(id)
                .bind(to.as_str())
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(&format!(
        "UPDATE {jobs}
            SET version = $2, updated_at = $3,
                {total} = (SELECT coalesce(sum({count}), 0) FROM {tasks} WHERE job_id = $1)
          WHERE id = $1"
    ))
    .bind(id)
    .bind(version)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Sets what is given of one task.
#[expect(clippy::too_many_arguments, reason = "one column per argument")]
async fn set_task(
    conn: &mut PgConnection,
    tables: &JobTables,
    id: Uuid,
    task: u32,
    status: Option<TaskStatus>,
    count: Option<u32>,
    message: Option<String>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let JobTables {
        tasks,
        count: column,
        ..
    } = tables;
    sqlx::query(&format!(
        "UPDATE {tasks}
            SET status = coalesce($3, status), {column} = coalesce($4, {column}),
                message = coalesce($5, message), updated_at = $6
          WHERE job_id = $1 AND task = $2"
    ))
    .bind(id)
    .bind(number(task))
    .bind(status.map(TaskStatus::as_str))
    .bind(count.map(number))
    .bind(message)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Moves `tasks` to `status` (canceled at once, or pending again).
async fn requeue(
    conn: &mut PgConnection,
    tables: &JobTables,
    id: Uuid,
    numbers: &[u32],
    status: TaskStatus,
    restart: bool,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let JobTables { tasks, count, .. } = tables;
    let numbers: Vec<i32> = numbers.iter().copied().map(number).collect();
    sqlx::query(&format!(
        "UPDATE {tasks}
            SET status = $3, attempts = CASE WHEN $3 = 'pending' THEN 0 ELSE attempts END,
                retry_at = NULL,
                message = CASE WHEN $3 = 'pending' THEN NULL ELSE message END,
                finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE finished_at END,
                {count} = CASE WHEN $4 THEN 0 ELSE {count} END, updated_at = $5
          WHERE job_id = $1 AND task = ANY($2)"
    ))
    .bind(id)
    .bind(numbers)
    .bind(status.as_str())
    .bind(restart)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}
