//! The batch around delivery: `ready_to_deliver` → `delivering` (starting each pushed
//! result's delivery) → `done` once every request is settled, and back to `delivering` when
//! a result of a done batch is redelivered. Decided from `batch_request_counts`; each step is
//! a command the batch's table checks, so a repeated step is refused, never doubled.

use chronicle_aggregates::batch::{Batch, BatchCommand, BatchServices};
use chronicle_aggregates::request::RequestEvent;
use chronicle_aggregates::ErrorCode;
use chronicle_projections::request_moves;
use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command::{CommandContext, CommandError, Commands};

/// Statuses of requests whose delivery has not ended.
const UNSETTLED: &str = "'pending', 'provider_processing', 'provider_processed', 'delivering'";

/// Moves batches along; see the module doc.
pub(super) struct BatchDelivery {
    commands: Commands,
    pool: PgPool,
    services: BatchServices,
}

impl BatchDelivery {
    pub(super) fn new(commands: Commands, pool: PgPool, services: BatchServices) -> Self {
        Self {
            commands,
            pool,
            services,
        }
    }

    /// One pass: start ready batches, finish settled ones, reopen redelivered ones.
    pub(super) async fn advance(&self) -> Result<(), CommandError> {
        self.start_ready().await?;
        self.finish_settled().await?;
        self.reopen_redelivered().await
    }

    /// Batches whose every result is recorded (and projected): their pushed results start
    /// delivering, then the batch does.
    async fn start_ready(&self) -> Result<(), CommandError> {
        let ready: Vec<Uuid> = sqlx::query_scalar(
            "SELECT b.id FROM batches b
              WHERE b.status = 'ready_to_deliver'
                AND (SELECT count(*) FROM batch_custom_ids c WHERE c.batch_id = b.id)
                    = (SELECT coalesce(sum(n), 0) FROM batch_request_counts r
                        WHERE r.batch_id = b.id)
                AND NOT EXISTS (SELECT 1 FROM batch_request_counts r
                                 WHERE r.batch_id = b.id AND r.n > 0
                                   AND r.status IN ('pending', 'provider_processing'))
              LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        for batch_id in ready {
            let pushed: Vec<String> = sqlx::query_scalar(
                "SELECT id::text FROM requests
                  WHERE batch_id = $1 AND status = 'provider_processed'
                    AND delivery ->> 'kind' <> 'poll'",
            )
            .bind(batch_id)
            .fetch_all(&self.pool)
            .await?;
            let started = RequestEvent::DeliveryStarted { at: Utc::now() };
            let context = CommandContext::system(batch_id);
            let metadata = context.metadata(Uuid::now_v7().to_string()).to_value();
            let mut conn = self.pool.acquire().await?;
            request_moves::append(&mut conn, &metadata, &pushed, request_moves::all(&started))
                .await?;
            drop(conn);
            self.on_batch(batch_id, BatchCommand::StartDelivery { at: Utc::now() })
                .await?;
        }
        Ok(())
    }

    /// Delivering batches with no unsettled request: done, with their delivered and
    /// undelivered counts.
    async fn finish_settled(&self) -> Result<(), CommandError> {
        let settled: Vec<(Uuid, i64, i64)> = sqlx::query_as(&format!(
            "SELECT b.id,
                    coalesce(sum(r.n) FILTER (WHERE r.status IN ('delivered', 'consumed')), 0)::bigint,
                    coalesce(sum(r.n) FILTER (WHERE r.status IN ('delivery_failed',
                                                                   'consume_failed')), 0)::bigint
               FROM batches b LEFT JOIN batch_request_counts r ON r.batch_id = b.id
              WHERE b.status = 'delivering'
              GROUP BY b.id
             HAVING coalesce(sum(r.n) FILTER (WHERE r.status IN ({UNSETTLED})), 0) = 0
              LIMIT 100"
        ))
        .fetch_all(&self.pool)
        .await?;
        for (batch_id, delivered, undelivered) in settled {
            let command = BatchCommand::FinishDelivery {
                delivered: u64::try_from(delivered).unwrap_or_default(),
                undelivered: u64::try_from(undelivered).unwrap_or_default(),
                at: Utc::now(),
            };
            self.on_batch(batch_id, command).await?;
        }
        Ok(())
    }

    /// Done batches with a result being delivered again.
    async fn reopen_redelivered(&self) -> Result<(), CommandError> {
        let reopened: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT r.batch_id FROM batch_request_counts r
               JOIN batches b ON b.id = r.batch_id
              WHERE r.status = 'delivering' AND r.n > 0 AND b.status = 'done'
              LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        for batch_id in reopened {
            self.on_batch(batch_id, BatchCommand::StartDelivery { at: Utc::now() })
                .await?;
        }
        Ok(())
    }

    /// Runs a batch command; a refusal by the transition table means another pass (or the
    /// read model's lag) got there first, which is fine.
    async fn on_batch(&self, batch_id: Uuid, command: BatchCommand) -> Result<(), CommandError> {
        let context = CommandContext::system(batch_id);
        let id = batch_id.to_string();
        match self
            .commands
            .execute::<Batch>(&context, &id, command, &self.services, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected {
                code: ErrorCode::InvalidTransition,
                ..
            }) => Ok(()),
            Err(other) => Err(other),
        }
    }
}
