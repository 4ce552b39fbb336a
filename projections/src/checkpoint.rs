//! `projection_checkpoints`: how far each projector has applied the global log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

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

/// Creates the checkpoints of `names` that do not exist yet, at the start of the log. An
/// instance does so before it appends anything: an inline projector is applied by an append
/// only when its checkpoint exists and has caught up.
///
/// # Errors
/// Any database error.
pub async fn create(db: impl PgExecutor<'_>, names: &[&str]) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (name) SELECT unnest($1::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(names)
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
                   updated_at = now(), rebuild_target = nullif(c.rebuild_target,
                       least(c.rebuild_target, m.position))
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

/// Puts the (locked) checkpoint back to the start of the log, for a rebuild, which lasts
/// until it passes the log's head of now; returns that head (0 for an empty log).
///
/// # Errors
/// Any database error.
pub async fn reset(conn: &mut PgConnection, name: &str) -> Result<i64, sqlx::Error> {
    // The notification tells the instance running the projector, when it commits.
    let target: Option<i64> = sqlx::query_scalar(
        "WITH reset AS (
            UPDATE projection_checkpoints
               SET log_position = 0, events_applied = 0, updated_at = now(),
                   rebuild_target = (SELECT max(log_position) FROM events)
             WHERE name = $1
            RETURNING rebuild_target)
         SELECT (SELECT rebuild_target FROM reset) FROM pg_notify('chronicle_resets', $1)",
    )
    .bind(name)
    .fetch_one(conn)
    .await?;
    Ok(target.unwrap_or(0))
}

/// A projector's progress, for operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The projector's name.
    pub name: String,
    /// The last applied event.
    pub cursor: LogCursor,
    /// Events applied since the last reset.
    pub events_applied: i64,
    /// Committed events of its types not applied yet.
    pub lag: i64,
    /// How long the oldest of those has waited, in seconds (0 without lag).
    pub lag_seconds: f64,
    /// When the checkpoint last moved.
    pub updated_at: DateTime<Utc>,
    /// While it rebuilds: the log's head when the rebuild started.
    pub rebuild_target: Option<i64>,
    /// While it is halted: the position of the parked event it waits on.
    pub halted_at: Option<i64>,
    /// Its events parked and not resolved yet.
    pub parked: i64,
}

/// How a projection stands, derived from its checkpoint and parked events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Applying the log as it grows.
    Live,
    /// Applying the log from the start after a reset.
    Rebuilding,
    /// Stopped at a parked event until an admin resolves it.
    Halted,
}

impl Status {
    /// How it stands: halted on a parked event, else rebuilding until it passes its target.
    pub fn state(&self) -> State {
        match (self.halted_at, self.rebuild_target) {
            (Some(_), _) => State::Halted,
            (None, Some(_)) => State::Rebuilding,
            (None, None) => State::Live,
        }
    }

    /// While rebuilding, the share (0 to 1) of the log up to its target applied.
    pub fn rebuild_progress(&self) -> Option<f64> {
        self.rebuild_target
            .map(|target| (self.cursor.position as f64 / target.max(1) as f64).clamp(0.0, 1.0))
    }
}

type StatusRow = (
    String,
    i64,
    i64,
    i64,
    f64,
    DateTime<Utc>,
    Option<i64>,
    Option<i64>,
    i64,
);

/// The checkpoint of each of `projectors` that exists, with its lag behind the log's
/// committed events of its types, in name order.
///
/// # Errors
/// Any database error.
pub async fn status(
    db: impl PgExecutor<'_>,
    projectors: &[Arc<dyn Projector>],
) -> Result<Vec<Status>, sqlx::Error> {
    let names: Vec<&str> = projectors.iter().map(|p| p.name()).collect();
    let types: Vec<Option<String>> = projectors.iter().map(|p| type_list(p.as_ref())).collect();
    let rows: Vec<StatusRow> = sqlx::query_as(
        "WITH p AS (SELECT * FROM UNNEST($1::text[], $2::text[]) AS p(name, types))
         SELECT c.name, c.log_position, c.events_applied, lag.events,
                coalesce(extract(epoch FROM now() - lag.oldest), 0)::float8,
                c.updated_at, c.rebuild_target,
                (SELECT min(x.log_position) FROM parked_events x
                  WHERE x.projection = c.name AND x.status = 'parked' AND x.halted),
                (SELECT count(*) FROM parked_events x
                  WHERE x.projection = c.name AND x.status = 'parked')
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
    Ok(rows
        .into_iter()
        .map(
            |(
                name,
                position,
                events_applied,
                lag,
                lag_seconds,
                updated_at,
                target,
                halted,
                parked,
            )| {
                Status {
                    name,
                    cursor: LogCursor::at(position),
                    events_applied,
                    lag,
                    lag_seconds,
                    updated_at,
                    rebuild_target: target,
                    halted_at: halted,
                    parked,
                }
            },
        )
        .collect())
}
