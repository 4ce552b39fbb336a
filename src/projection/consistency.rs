//! Reading one's writes: waiting, bounded, until the read models have applied the log up to
//! a position (the cursor a mutation returned).
//!
//! A projector has passed a position when no event of its aggregate types lies between its
//! checkpoint and that position (a filtered projector records the events it skips only now
//! and then, so its checkpoint alone may lag behind events it does not read). The wait needs
//! no polling: it checks again each time a projector applies a page anywhere
//! (`chronicle_projected`).

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::{LogCursor, Projector};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::log::LogWaker;

/// The longest pause between two looks at a replica that has not replayed far enough.
const REPLICA_POLL_MAX: Duration = Duration::from_millis(25);

/// The read models an instance keeps, and how to wait for them.
#[derive(Clone)]
pub struct ReadModels {
    pool: PgPool,
    waker: LogWaker,
    /// One SQL condition that holds when every projector has passed `$1`.
    passed: Arc<String>,
}

/// The read models did not reach the position within the bound.
#[derive(Debug, thiserror::Error)]
#[error("the read models have not reached {position} within {} ms; retry the read", within.as_millis())]
pub struct NotYet {
    /// The position waited for.
    pub position: LogCursor,
    /// How long was waited.
    pub within: Duration,
}

impl ReadModels {
    /// The read models of `projectors`, kept in `pool`.
    pub fn new(pool: PgPool, waker: LogWaker, projectors: &[Arc<dyn Projector>]) -> Self {
        Self {
            pool,
            waker,
            passed: Arc::new(passed_condition(projectors)),
        }
    }

    /// Returns once every read model has applied the log up to `position`.
    ///
    /// # Errors
    /// [`NotYet`] after `within`; a database error (as `NotYet` too: the caller retries).
    pub async fn wait_past(&self, position: LogCursor, within: Duration) -> Result<(), NotYet> {
        let deadline = Instant::now() + within;
        let mut wake = self.waker.projections_waiter();
        loop {
            if self.passed_in(&self.pool, position).await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(NotYet { position, within });
            }
            wake.wait_until(Some(deadline)).await;
        }
    }

    /// Returns true once the read models in `replica` (a streaming replica of this
    /// database) have applied the log up to `position`, false after `within`. A standby
    /// sends no notifications, so this polls, from 1 ms apart up to 25 ms:
    /// replay on a healthy replica takes milliseconds.
    pub async fn wait_replayed(
        &self,
        replica: &PgPool,
        position: LogCursor,
        within: Duration,
    ) -> bool {
        let deadline = Instant::now() + within;
        let mut pause = Duration::from_millis(1);
        loop {
            if self.passed_in(replica, position).await.unwrap_or(false) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(REPLICA_POLL_MAX);
        }
    }

    /// Whether the read models in `pool` have applied the log up to `position`.
    async fn passed_in(&self, pool: &PgPool, position: LogCursor) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(&self.passed)
            .bind(position.position)
            .fetch_one(pool)
            .await
    }
}

/// True when `$1` is a position of the log (a cursor from the future has not been written,
/// so nothing has passed it) and no projector has an event of its types after its checkpoint
/// and at or before it. Names and types are the projectors' own constants.
fn passed_condition(projectors: &[Arc<dyn Projector>]) -> String {
    let rows: Vec<String> = projectors
        .iter()
        .map(|projector| {
            let types = projector.aggregate_types().map_or_else(
                || "NULL::text[]".to_owned(),
                |types| {
                    let quoted: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
                    format!("ARRAY[{}]::text[]", quoted.join(", "))
                },
            );
            format!("('{}', {types})", projector.name())
        })
        .collect();
    format!(
        "SELECT $1 <= (SELECT coalesce(max(log_position), 0) FROM events)
            AND coalesce(bool_and(NOT EXISTS (
                SELECT 1 FROM events e
                 WHERE e.log_position > coalesce(c.log_position, 0) AND e.log_position <= $1
                   AND (p.types IS NULL OR e.aggregate_type = ANY(p.types)))), true)
           FROM (VALUES {}) AS p(name, types)
           LEFT JOIN projection_checkpoints c ON c.name = p.name",
        rows.join(", ")
    )
}
