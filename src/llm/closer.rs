//! Closes building batches that waited long enough: when their oldest request is older than
//! the configured maximum wait, or the batch is an hour old, whichever comes first.
//!
//! Live instances share it by partitions of the batch id space. Closing is a command on the
//! batch, so a close that meets another (its owner's flush, a limit) ends with one `Closed`
//! event and one harmless `INVALID_TRANSITION`.

use std::time::Duration;

use chronicle_aggregates::batch::{Batch, BatchCommand, BatchError, CloseReason};
use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::submit::next_batch_id;
use crate::command::{CommandContext, Commands, Refusal};
use crate::log::{next_due, LogWaker, Waiter};
use crate::projection::Role;

/// A batch is closed after this long, whatever the configured wait.
const MAX_AGE: Duration = Duration::from_secs(3600);

/// The periodic batch closer.
pub struct BatchCloser {
    commands: Commands,
    pool: PgPool,
    max_wait: Duration,
    every: Duration,
}

impl BatchCloser {
    /// Closes batches older than `max_wait`, looking at most every `every`.
    pub fn new(commands: Commands, pool: PgPool, max_wait: Duration, every: Duration) -> Self {
        Self {
            commands,
            pool,
            max_wait,
            every,
        }
    }

    /// The role that lets an instance close batches (partitioned).
    pub const ROLE: &'static str = "batch_closer";

    /// Runs until `shutdown`, in the partitions of `role` this instance holds.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        role.lead_while_held(self.every, &shutdown, |role| {
            self.close_while_held(role, waker.following(&["batches"]), &shutdown)
        })
        .await;
    }

    /// Looks when the oldest building batch falls due, when read models change (a batch
    /// opened or closed) at most every `every`, and when partitions are gained.
    async fn close_while_held(
        &self,
        mut role: Role,
        mut wake: Waiter,
        shutdown: &CancellationToken,
    ) {
        let next = format!(
            "SELECT min(created_at) + interval '{} milliseconds' FROM batches
              WHERE status = 'building' AND chronicle_partition(id) = ANY($1)",
            self.max_wait.min(MAX_AGE).as_millis()
        );
        while !shutdown.is_cancelled() && role.is_held() {
            let looked = tokio::time::Instant::now();
            if let Err(error) = self.close_due(&role).await {
                tracing::warn!(%error, "closing waiting batches failed; will retry");
            }
            let due = next_due(&self.pool, &next, &role.partitions()).await;
            tokio::select! {
                () = wake.wait_until(due) => {
                    tokio::time::sleep_until(looked + self.every).await;
                }
                () = role.changed() => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Closes every batch that is due in `role`'s partitions held here and returns how many
    /// this call closed.
    async fn close_due(&self, role: &Role) -> Result<usize, sqlx::Error> {
        let wait = self.max_wait.min(MAX_AGE);
        let due: Vec<(Uuid, bool)> = sqlx::query_as(
            "SELECT id, created_at < now() - $2::interval FROM batches
              WHERE status = 'building' AND created_at < now() - $1::interval
                AND chronicle_partition(id) = ANY($3)
              ORDER BY created_at LIMIT 1000",
        )
        .bind(format!("{} milliseconds", wait.as_millis()))
        .bind(format!("{} milliseconds", MAX_AGE.as_millis()))
        .bind(role.partitions())
        .fetch_all(&self.pool)
        .await?;
        let context = CommandContext {
            actor: "system".into(),
            correlation_id: Uuid::now_v7().to_string(),
            causation_id: None,
        };
        let mut closed = 0;
        for (batch_id, too_old) in due {
            let Some(_lease) = role.lease(batch_id) else {
                continue;
            };
            let reason = if too_old {
                CloseReason::MaxAge
            } else {
                CloseReason::MaxWait
            };
            let command = BatchCommand::Close {
                reason,
                successor: next_batch_id(batch_id),
                at: Utc::now(),
            };
            let id = batch_id.to_string();
            match self
                .commands
                .attempt::<Batch>(&context, &id, command, &())
                .await
            {
                Ok(_) => {
                    tracing::info!(batch.id = %batch_id, reason = reason.as_str(), "closed batch");
                    closed += 1;
                }
                // Closed meanwhile by its owner, a limit or another instance.
                Err(Refusal::Rejected(BatchError::InvalidTransition { .. })) => {}
                Err(refusal) => {
                    tracing::warn!(batch.id = %batch_id, error = ?refusal, "cannot close batch");
                }
            }
        }
        Ok(closed)
    }
}
