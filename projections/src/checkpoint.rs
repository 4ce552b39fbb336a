//! `projection_checkpoints`: how far each projector has applied the global log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::rebuilds::{self, Rebuild};
use crate::{type_list, LogCursor, Projector};

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

/// Creates the checkpoints of `projectors` that do not exist yet, at the start of the log
/// and at their projectors' versions. An instance does so before it appends anything: an
/// inline projector is applied by an append only when its checkpoint exists and has caught
/// up.
///
/// # Errors
/// Any database error.
pub async fn create(
    db: impl PgExecutor<'_>,
    projectors: &[Arc<dyn Projector>],
) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = projectors.iter().map(|p| p.name()).collect();
    let versions: Vec<i32> = projectors.iter().map(|p| p.version()).collect();
    sqlx::query(
        "INSERT INTO projection_checkpoints (name, version)
         SELECT * FROM UNNEST($1::text[], $2::int[])
         ON CONFLICT DO NOTHING",
    )
    .bind(names)
    .bind(versions)
    .execute(db)
    .await?;
    Ok(())
}

/// Locks the checkpoint rows of `names` for the rest of the transaction (in name order, as
/// every locker does) and returns where each stands, in the order of `names`.
///
/// Every writer of a projector's tables takes this lock first (a page being applied, a
/// reset), so they serialize on it and can never deadlock on the tables' rows.
///
/// # Errors
/// Any database error.
pub async fn lock(conn: &mut PgConnection, names: &[&str]) -> Result<Vec<LogCursor>, sqlx::Error> {
    // The rows exist but for a projector's very first page: one statement in the common case.
    for _ in 0..2 {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT name, log_position FROM projection_checkpoints
              WHERE name = ANY($1) ORDER BY name FOR UPDATE",
        )
        .bind(names)
        .fetch_all(&mut *conn)
        .await?;
        let found: Option<Vec<LogCursor>> = names
            .iter()
            .map(|name| {
                let (_, position) = rows.iter().find(|(found, _)| found == name)?;
                Some(LogCursor::at(*position))
            })
            .collect();
        if let Some(found) = found {
            return Ok(found);
        }
        for name in names {
            load(&mut *conn, name).await?;
        }
    }
    Err(sqlx::Error::RowNotFound)
}

/// One projector's checkpoint move: its name, where it moves to, how many events it applied.
pub type Move<'a> = (&'a str, LogCursor, usize);

/// Moves the (locked) checkpoints in one statement; `chronicle_projected` is notified on
/// commit for each that applied events.
///
/// # Errors
/// Any database error.
pub async fn advance(conn: &mut PgConnection, moves: &[Move<'_>]) -> Result<(), sqlx::Error> {
    let names: Vec<&str> = moves.iter().map(|(name, ..)| *name).collect();
    let positions: Vec<i64> = moves.iter().map(|(_, to, _)| to.position).collect();
    let applied: Vec<i64> = moves
        .iter()
        .map(|(.., applied)| i64::try_from(*applied).unwrap_or(i64::MAX))
        .collect();
    // Applied events changed read models: workers that follow them are told at commit.
    sqlx::query(
        "WITH moves AS (
            SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[])
                       AS m(name, position, applied)),
         moved AS (
            UPDATE projection_checkpoints c
               SET log_position = m.position, events_applied = c.events_applied + m.applied,
                   updated_at = now()
              FROM moves m
             WHERE c.name = m.name)
         SELECT pg_notify('chronicle_projected', name) FROM moves WHERE applied > 0",
    )
    .bind(names)
    .bind(positions)
    .bind(applied)
    .execute(conn)
    .await?;
    Ok(())
}

/// Puts the (locked) checkpoint of `name` where a rebuild's copies stand, as they take
/// the live tables' place: at `cursor`, having applied `applied` events, built by `version`.
/// Its runners and followers are told on commit.
///
/// # Errors
/// Any database error.
pub async fn install(
    conn: &mut PgConnection,
    name: &str,
    (cursor, applied, version): (LogCursor, i64, i32),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH installed AS (
            UPDATE projection_checkpoints
               SET log_position = $2, events_applied = $3, version = $4, updated_at = now()
             WHERE name = $1)
         SELECT pg_notify('chronicle_resets', $1), pg_notify('chronicle_projected', $1)",
    )
    .bind(name)
    .bind(cursor.position)
    .bind(applied)
    .bind(version)
    .execute(conn)
    .await?;
    Ok(())
}

/// A projector's progress, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The projector's name.
    pub name: String,
    /// The projector version that built the live tables.
    pub version: i32,
    /// The last applied event.
    pub cursor: LogCursor,
    /// Events the live tables hold (applied since they were built).
    pub events_applied: i64,
    /// Committed events of its types not applied yet.
    pub lag: i64,
    /// How long the oldest of those has waited, in seconds (0 without lag).
    pub lag_seconds: f64,
    /// When the checkpoint last moved.
    pub updated_at: DateTime<Utc>,
    /// While it is halted: the position of the parked event it waits on.
    pub halted_at: Option<i64>,
    /// Its events parked and not resolved yet.
    pub parked: i64,
    /// The log's last position, for a rebuild's progress.
    pub head: i64,
    /// Its rebuild beside the live tables, in progress or failed.
    pub rebuild: Option<Rebuild>,
}

/// How a projection stands, derived from its checkpoint, parked events and rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applying the log as it grows.
    Live,
    /// Live, and rebuilt beside the live tables (which keep answering until the swap).
    Rebuilding,
    /// Stopped at a parked event until an admin resolves it.
    Halted,
}

impl Status {
    /// How it stands: halted on a parked event, else rebuilding while a rebuild runs.
    pub fn state(&self) -> State {
        let rebuilding = self.rebuild.as_ref().is_some_and(|r| r.phase.running());
        match (self.halted_at, rebuilding) {
            (Some(_), _) => State::Halted,
            (None, true) => State::Rebuilding,
            (None, false) => State::Live,
        }
    }

    /// While a rebuild runs, the share (0 to 1) of the log its copies have applied.
    pub fn rebuild_progress(&self) -> Option<f64> {
        let rebuild = self.rebuild.as_ref().filter(|r| r.phase.running())?;
        let done = rebuild.cursor.position as f64 / self.head.max(1) as f64;
        Some(done.clamp(0.0, 1.0))
    }
}

type StatusRow = (
    String,
    i32,
    i64,
    i64,
    i64,
    f64,
    DateTime<Utc>,
    Option<i64>,
    i64,
    i64,
);

/// The checkpoint of each of `projectors` that exists, with its lag behind the log's
/// committed events of its types and its rebuild, in name order.
///
/// # Errors
/// Any database error.
pub async fn status(
    db: impl PgExecutor<'_> + Copy,
    projectors: &[Arc<dyn Projector>],
) -> Result<Vec<Status>, sqlx::Error> {
    let names: Vec<&str> = projectors.iter().map(|p| p.name()).collect();
    let types: Vec<Option<String>> = projectors.iter().map(|p| type_list(p.as_ref())).collect();
    let rows: Vec<StatusRow> = sqlx::query_as(
        "WITH p AS (SELECT * FROM UNNEST($1::text[], $2::text[]) AS p(name, types))
         SELECT c.name, c.version, c.log_position, c.events_applied, lag.events,
                coalesce(extract(epoch FROM now() - lag.oldest), 0)::float8,
                c.updated_at,
                (SELECT min(x.log_position) FROM parked_events x
                  WHERE x.projection = c.name AND x.status = 'parked' AND x.halted),
                (SELECT count(*) FROM parked_events x
                  WHERE x.projection = c.name AND x.status = 'parked'),
                (SELECT coalesce(max(log_position), 0) FROM events)
           FROM p JOIN projection_checkpoints c ON c.name = p.name
          CROSS JOIN LATERAL (
                SELECT count(*) AS events, min(e.recorded_at) AS oldest FROM events e
                 WHERE e.log_position > c.log_position
                   AND (p.types IS NULL
                        OR e.aggregate_type = ANY(string_to_array(p.types, ',')))) lag
          ORDER BY c.name",
    )
    .bind(names)
    .bind(types)
    .fetch_all(db)
    .await?;
    let mut rebuilds = rebuilds::all(db).await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let (name, version, position, events_applied, lag, lag_seconds, updated_at) =
                (row.0, row.1, row.2, row.3, row.4, row.5, row.6);
            let rebuild = rebuilds
                .iter()
                .position(|r| r.projection == name)
                .map(|found| rebuilds.swap_remove(found));
            Status {
                name,
                version,
                cursor: LogCursor::at(position),
                events_applied,
                lag,
                lag_seconds,
                updated_at,
                halted_at: row.7,
                parked: row.8,
                head: row.9,
                rebuild,
            }
        })
        .collect())
}
