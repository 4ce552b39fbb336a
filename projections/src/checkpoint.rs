//! `projection_checkpoints`: how far each projector has applied the global log.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::LogCursor;

/// Reads a projector's checkpoint, creating it at the start of the log on first use.
///
/// # Errors
/// Any database error.
pub async fn load(conn: &mut PgConnection, name: &str) -> Result<LogCursor, sqlx::Error> {
    sqlx::query("INSERT INTO projection_checkpoints (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(name)
        .execute(&mut *conn)
        .await?;
    let position: i64 =
        sqlx::query_scalar("SELECT log_position FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *conn)
            .await?;
    Ok(LogCursor::at(position))
}

/// Locks the checkpoint row for the rest of the transaction and returns where it stands.
///
/// Every writer of a projector's tables takes this lock first (a page being applied, a
/// reset), so they serialize on it and can never deadlock on the tables' rows.
///
/// # Errors
/// Any database error.
pub async fn lock(conn: &mut PgConnection, name: &str) -> Result<LogCursor, sqlx::Error> {
    // The row exists but for a projector's very first page: one statement in the common case.
    for _ in 0..2 {
        let row: Option<i64> = sqlx::query_scalar(
            "SELECT log_position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
        )
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(position) = row {
            return Ok(LogCursor::at(position));
        }
        load(&mut *conn, name).await?;
    }
    Err(sqlx::Error::RowNotFound)
}

/// Moves the (locked) checkpoint to `to` after `applied` more events; when some were
/// applied, `chronicle_projected` is notified on commit.
///
/// # Errors
/// Any database error.
pub async fn advance(
    conn: &mut PgConnection,
    name: &str,
    to: LogCursor,
    applied: usize,
) -> Result<(), sqlx::Error> {
    // Applied events changed read models: workers that follow them are told at commit.
    sqlx::query(
        "WITH moved AS (
            UPDATE projection_checkpoints
               SET log_position = $2, events_applied = events_applied + $3, updated_at = now()
             WHERE name = $1)
         SELECT pg_notify('chronicle_projected', $1) WHERE $3 > 0",
    )
    .bind(name)
    .bind(to.position)
    .bind(i64::try_from(applied).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts the (locked) checkpoint back to the start of the log, for a rebuild.
///
/// # Errors
/// Any database error.
pub async fn reset(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    // The notification tells the instance running the projector, when it commits.
    sqlx::query(
        "WITH reset AS (
            UPDATE projection_checkpoints
               SET log_position = 0, events_applied = 0, updated_at = now()
             WHERE name = $1)
         SELECT pg_notify('chronicle_resets', $1)",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}

/// A projector's progress, for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The projector's name.
    pub name: String,
    /// The last applied event.
    pub cursor: LogCursor,
    /// Events applied since the last reset.
    pub events_applied: i64,
    /// Committed events not applied yet.
    pub lag: i64,
    /// When the checkpoint last moved.
    pub updated_at: DateTime<Utc>,
}

/// Every checkpoint with its lag behind the log's committed events.
///
/// # Errors
/// Any database error.
pub async fn status(db: impl PgExecutor<'_>) -> Result<Vec<Status>, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT c.name, c.log_position, c.events_applied,
                (SELECT count(*) FROM events e WHERE e.log_position > c.log_position),
                c.updated_at
           FROM projection_checkpoints c
          ORDER BY c.name",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, position, events_applied, lag, updated_at)| Status {
            name,
            cursor: LogCursor::at(position),
            events_applied,
            lag,
            updated_at,
        })
        .collect())
}
