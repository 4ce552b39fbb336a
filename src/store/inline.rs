//! Inline projectors: applied to a group commit's events in its own transaction, so what
//! they write commits with the events (the read models a caller reads back exist the moment
//! the command is acknowledged).
//!
//! Each keeps its ordinary checkpoint and runner. A group applies a projector inline only
//! when its checkpoint has applied every earlier event of its aggregate types, and moves the
//! checkpoint of every such projector to the group's last event in the same transaction;
//! otherwise (after an upgrade, during a rebuild) the runner applies the events later, in log
//! order. Either way each event is applied once. Appends are serialized by the log lock,
//! which an appending transaction holds from its first event on; every other writer of an
//! inline projector's checkpoint (its runner, a rebuild's reset) takes that lock first, so
//! they never wait on each other in opposite orders and a checkpoint found caught up stays so
//! until the group commits.

use std::sync::Arc;

use chronicle_projections::checkpoint::{self, Move};
use chronicle_projections::{type_list, LogCursor, ProjectionError, Projector, RecordedEvent};
use sqlx::PgConnection;

/// The advisory lock every appending transaction holds until it commits (taken by the
/// `events_log_position` trigger): log positions follow commit order under it.
pub const LOG_LOCK: i64 = 7_163_101_030_252_110_700;

/// Takes the log lock for the rest of the transaction on `conn`, as every writer of an
/// inline projector's checkpoint does before touching it.
///
/// # Errors
/// Any database error.
pub async fn lock_log(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LOG_LOCK)
        .execute(conn)
        .await?;
    Ok(())
}

/// The projectors applied in the append's transaction, in the order they apply.
#[derive(Clone, Default)]
pub struct InlineProjectors {
    projectors: Arc<Vec<Arc<dyn Projector>>>,
}

impl InlineProjectors {
    /// These projectors, inline, applied in this order.
    pub fn new(projectors: Vec<Arc<dyn Projector>>) -> Self {
        Self {
            projectors: Arc::new(projectors),
        }
    }

    /// Whether any inline projector reads events of `aggregate_type`.
    pub fn want(&self, aggregate_type: &str) -> bool {
        self.projectors
            .iter()
            .any(|projector| reads(projector.as_ref(), aggregate_type))
    }

    /// Applies the new `events` (of one group commit, in log order) with every inline
    /// projector that is caught up, inside the append's transaction `conn`, and moves their
    /// checkpoints past the group.
    ///
    /// # Errors
    /// The projector's or the database's.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        events: Vec<RecordedEvent>,
    ) -> Result<(), ProjectionError> {
        let Some(first) = events.first().map(|e| e.cursor) else {
            return Ok(());
        };
        let caught_up = self.caught_up(conn, first).await?;
        let mut applied = Vec::with_capacity(caught_up.len());
        for projector in &caught_up {
            let read: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| reads(projector.as_ref(), &e.aggregate_type))
                .collect();
            applied.push(read.len());
            if !read.is_empty() {
                projector.apply(&mut *conn, &read).await?;
            }
        }
        let last = events.last().map_or(first, |e| e.cursor);
        let moves: Vec<Move<'_>> = caught_up
            .iter()
            .zip(applied)
            .map(|(projector, applied)| (projector.name(), last, applied))
            .collect();
        checkpoint::advance(conn, &moves).await?;
        Ok(())
    }

    /// The projectors that have applied every event of their types before `first`, in
    /// application order; their checkpoints are locked for the rest of the transaction.
    async fn caught_up(
        &self,
        conn: &mut PgConnection,
        first: LogCursor,
    ) -> Result<Vec<Arc<dyn Projector>>, sqlx::Error> {
        let names: Vec<&str> = self.projectors.iter().map(|p| p.name()).collect();
        let types: Vec<Option<String>> = self
            .projectors
            .iter()
            .map(|p| type_list(p.as_ref()))
            .collect();
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT c.name FROM projection_checkpoints c
               JOIN UNNEST($1::text[], $2::text[]) AS p(name, types) ON p.name = c.name
              WHERE NOT EXISTS (
                    SELECT 1 FROM events e
                     WHERE e.log_position > c.log_position AND e.log_position < $3
                       AND (p.types IS NULL
                            OR e.aggregate_type = ANY(string_to_array(p.types, ','))))
              ORDER BY c.name FOR UPDATE OF c",
        )
        .bind(&names)
        .bind(&types)
        .bind(first.position)
        .fetch_all(&mut *conn)
        .await?;
        Ok(self
            .projectors
            .iter()
            .filter(|p| found.iter().any(|name| name == p.name()))
            .cloned()
            .collect())
    }
}

fn reads(projector: &dyn Projector, aggregate_type: &str) -> bool {
    projector
        .aggregate_types()
        .is_none_or(|types| types.contains(&aggregate_type))
}
