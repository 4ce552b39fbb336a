//! Inline projectors: applied to a command's events in the command's own transaction, so what
//! they write commits with the events (the request streams a batch's submission starts exist
//! the moment the submission is acknowledged).
//!
//! Each keeps its ordinary checkpoint and runner. An append applies the projector inline only
//! when its checkpoint has applied every earlier event of its aggregate types, and moves the
//! checkpoint past the new events in the same transaction; otherwise (after an upgrade, during
//! a rebuild) the runner applies them later, in log order. Either way each event is applied
//! once. Appends are serialized by the log lock, which an appending transaction holds from its
//! first event on; a runner of an inline projector takes that lock before its checkpoint's, so
//! the two never wait on each other in opposite orders.

use std::sync::Arc;

use chronicle_projections::{ProjectionError, Projector, RecordedEvent};
use sqlx::PgConnection;

/// The advisory lock every appending transaction holds until it commits (taken by the
/// `events_log_position` trigger): log positions follow commit order under it.
pub const LOG_LOCK: i64 = 7_163_101_030_252_110_700;

/// The projectors applied in the append's transaction.
#[derive(Clone, Default)]
pub struct InlineProjectors {
    projectors: Arc<Vec<Arc<dyn Projector>>>,
}

impl InlineProjectors {
    /// These projectors, inline.
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

    /// Whether `name` is applied inline.
    pub fn contains(&self, name: &str) -> bool {
        self.projectors.iter().any(|p| p.name() == name)
    }

    /// Applies the new `events` (of one group commit, in log order) with every inline
    /// projector that reads any of them and is caught up, inside the append's transaction
    /// `conn`.
    ///
    /// # Errors
    /// The projector's or the database's.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for projector in self.projectors.iter() {
            let read: Vec<&RecordedEvent> = events
                .iter()
                .filter(|e| reads(projector.as_ref(), &e.aggregate_type))
                .collect();
            let (Some(first), Some(last)) = (read.first(), read.last()) else {
                continue;
            };
            if caught_up(conn, projector.as_ref(), (first, last), read.len()).await? {
                projector.apply(&mut *conn, &read).await?;
            }
        }
        Ok(())
    }
}

/// Moves `projector`'s checkpoint past `last` if it has applied every event of its types
/// before `first`: then it applies these `count` events now, else its runner will.
async fn caught_up(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    (first, last): (&RecordedEvent, &RecordedEvent),
    count: usize,
) -> Result<bool, ProjectionError> {
    let types = projector
        .aggregate_types()
        .map(|types| types.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>());
    Ok(sqlx::query_scalar::<_, bool>(
        "WITH moved AS (
            UPDATE projection_checkpoints c
               SET log_position = $2, events_applied = events_applied + $3,
                   updated_at = now()
             WHERE name = $1
               AND NOT EXISTS (
                   SELECT 1 FROM events e
                    WHERE e.log_position > c.log_position AND e.log_position < $4
                      AND ($5::text[] IS NULL OR e.aggregate_type = ANY($5)))
            RETURNING pg_notify('chronicle_projected', $1))
         SELECT EXISTS (SELECT 1 FROM moved)",
    )
    .bind(projector.name())
    .bind(last.cursor.position)
    .bind(i64::try_from(count).unwrap_or(i64::MAX))
    .bind(first.cursor.position)
    .bind(types)
    .fetch_one(&mut *conn)
    .await?)
}

fn reads(projector: &dyn Projector, aggregate_type: &str) -> bool {
    projector
        .aggregate_types()
        .is_none_or(|types| types.contains(&aggregate_type))
}
