//! Inline projectors: applied to a group commit's events in its own transaction, so what
//! they write commits with the events (the read models a caller reads back exist the moment
//! the command is acknowledged).
//!
//! Each keeps its ordinary checkpoint and runner. A group applies a projector inline only
//! when its checkpoint has applied every earlier event of its aggregate types, and moves the
//! checkpoint of every such projector to the group's last event in the same transaction;
//! otherwise (after an upgrade, after it halted) the runner applies the events later, in log
//! order. Either way each event is applied once. Appends are serialized by the log lock,
//! which an appending transaction holds from its first event on; every other writer of an
//! inline projector's checkpoint (its runner, a rebuild's swap) takes that lock first, so
//! they never wait on each other in opposite orders and a checkpoint found caught up stays so
//! until the group commits.

use std::sync::Arc;

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
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else {
            return Ok(());
        };
        let (first, last) = (first.cursor, last.cursor);
        for projector in self.claim(conn, first, last, events).await? {
            let read: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| reads(projector.as_ref(), &e.aggregate_type))
                .copied()
                .collect();
            if !read.is_empty() {
                projector.apply(&mut *conn, &read).await?;
            }
        }
        Ok(())
    }

    /// Moves to `last`, in one statement, the checkpoint of every projector that has applied
    /// every event of its types before `first`, counting the `events` it is about to apply;
    /// returns those projectors in application order. Their checkpoints stay locked for the
    /// rest of the transaction, and `chronicle_projected` is notified on commit for each that
    /// applies events. The transaction fails as a whole if a projector then fails.
    async fn claim(
        &self,
        conn: &mut PgConnection,
        first: LogCursor,
        last: LogCursor,
        events: &[&RecordedEvent],
    ) -> Result<Vec<Arc<dyn Projector>>, sqlx::Error> {
        let projectors = self.projectors.iter().map(AsRef::as_ref);
        let names: Vec<&str> = projectors.clone().map(|p| p.name()).collect();
        let types: Vec<Option<String>> = projectors.clone().map(type_list).collect();
        let applied: Vec<i64> = projectors
            .map(|p| {
                let count = events
                    .iter()
                    .filter(|e| reads(p, &e.aggregate_type))
                    .count();
                i64::try_from(count).unwrap_or(i64::MAX)
            })
            .collect();
        let claimed: Vec<String> = sqlx::query_scalar(
            "WITH p AS (
                SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
                           AS p(name, types, applied)),
             caught_up AS (
                SELECT c.name, p.applied FROM projection_checkpoints c JOIN p ON p.name = c.name
                 WHERE NOT EXISTS (
                       SELECT 1 FROM events e
                        WHERE e.log_position > c.log_position AND e.log_position < $4
                          AND (p.types IS NULL
                               OR e.aggregate_type = ANY(string_to_array(p.types, ','))))
                 ORDER BY c.name FOR UPDATE OF c),
             moved AS (
                UPDATE projection_checkpoints c
                   SET log_position = $5, events_applied = c.events_applied + m.applied,
                       updated_at = now()
                  FROM caught_up m WHERE c.name = m.name
                RETURNING c.name, m.applied)
             SELECT m.name FROM moved m
               LEFT JOIN LATERAL (SELECT pg_notify('chronicle_projected', m.name)
                                   WHERE m.applied > 0) notified ON true",
        )
        .bind(&names)
        .bind(&types)
        .bind(&applied)
        .bind(first.position)
        .bind(last.position)
        .fetch_all(&mut *conn)
        .await?;
        Ok(self
            .projectors
            .iter()
            .filter(|p| claimed.iter().any(|name| name == p.name()))
            .cloned()
            .collect())
    }
}

fn reads(projector: &dyn Projector, aggregate_type: &str) -> bool {
    projector
        .aggregate_types()
        .is_none_or(|types| types.contains(&aggregate_type))
}
