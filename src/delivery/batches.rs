//! The batch around delivery: `ready_to_deliver` → `delivering` (starting each pushed
//! result's delivery) → `done` once every request is settled, and back to `delivering` when
//! a result of a done batch is redelivered. Decided from `batch_request_counts`, and only
//! when those counts cover every request of the batch (so a rebuilding `requests` projection
//! cannot finish a batch early); each step is a command the batch's table checks, so a
//! repeated step is refused, never doubled.

use chronicle_aggregates::batch::{Batch, BatchCommand};
use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use crate::command::{CommandContext, CommandError, Commands};
use crate::projection::Role;

/// The read model holds a row for each of the batch's requests.
const COMPLETE: &str = "(SELECT count(*) FROM batch_custom_ids c WHERE c.batch_id = b.id)
                        = (SELECT coalesce(sum(n), 0) FROM batch_request_counts r
                            WHERE r.batch_id = b.id)";

/// Moves batches along; see the module doc.
pub(super) struct BatchDelivery {
    commands: Commands,
    pool: PgPool,
}

impl BatchDelivery {
    pub(super) fn new(commands: Commands, pool: PgPool) -> Self {
        Self { commands, pool }
    }

    /// One pass: start ready batches, finish settled ones, reopen redelivered ones. A batch
    /// that fails is logged and tried again on the next pass; the others go on.
    pub(super) async fn advance(&self, role: &Role) -> Result<(), CommandError> {
        let partitions = role.partitions();
        for batch_id in self.ready(&partitions).await? {
            let Some(_lease) = role.lease(batch_id) else {
                continue;
            };
            self.logged(batch_id, self.start(batch_id).await);
        }
        for (batch_id, delivered, undelivered) in self.settled(&partitions).await? {
            let Some(_lease) = role.lease(batch_id) else {
                continue;
            };
            let command = BatchCommand::FinishDelivery {
                delivered: u64::try_from(delivered).unwrap_or_default(),
                undelivered: u64::try_from(undelivered).unwrap_or_default(),
                at: Utc::now(),
            };
            self.logged(batch_id, self.on_batch(batch_id, command).await);
        }
        for batch_id in self.redelivered(&partitions).await? {
            let Some(_lease) = role.lease(batch_id) else {
                continue;
            };
            let command = BatchCommand::StartDelivery { at: Utc::now() };
            self.logged(batch_id, self.on_batch(batch_id, command).await);
        }
        Ok(())
    }

    /// Batches whose every result is recorded and projected.
    async fn ready(&self, partitions: &[i32]) -> Result<Vec<Uuid>, CommandError> {
        Ok(sqlx::query_scalar(&format!(
            "SELECT b.id FROM batches b
              WHERE b.status = 'ready_to_deliver' AND chronicle_partition(b.id) = ANY($1)
                AND {COMPLETE}
                AND NOT EXISTS (SELECT 1 FROM batch_request_counts r
                                 WHERE r.batch_id = b.id AND r.n > 0
                                   AND r.status IN ('pending', 'provider_processing'))
              LIMIT 100"
        ))
        .bind(partitions)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Starts delivering the batch's pushed results, then the batch.
    async fn start(&self, batch_id: Uuid) -> Result<(), CommandError> {
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
        self.commands
            .move_requests(&context, None, &pushed, |_, status| {
                (status == RequestStatus::ProviderProcessed).then(|| started.clone())
            })
            .await?;
        self.on_batch(batch_id, BatchCommand::StartDelivery { at: Utc::now() })
            .await
    }

    /// Delivering batches with no unsettled request, with their delivered and undelivered
    /// counts.
    async fn settled(&self, partitions: &[i32]) -> Result<Vec<(Uuid, i64, i64)>, CommandError> {
        Ok(sqlx::query_as(&format!(
            "SELECT b.id,
                    coalesce(sum(r.n) FILTER (WHERE r.status IN ('delivered', 'consumed')),
                             0)::bigint,
                    coalesce(sum(r.n) FILTER (WHERE r.status IN ('delivery_failed',
                                                                   'consume_failed')),
                             0)::bigint
               FROM batches b LEFT JOIN batch_request_counts r ON r.batch_id = b.id
              WHERE b.status = 'delivering' AND chronicle_partition(b.id) = ANY($1)
                AND {COMPLETE}
              GROUP BY b.id
             HAVING coalesce(sum(r.n) FILTER (WHERE r.status IN (
                        'pending', 'provider_processing', 'provider_processed', 'delivering')),
                    0) = 0
              LIMIT 100"
        ))
        .bind(partitions)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Done batches with a result being delivered again — checked against the requests' own
    /// events, since a rebuilding read model replays old `delivering` states.
    async fn redelivered(&self, partitions: &[i32]) -> Result<Vec<Uuid>, CommandError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT q.batch_id FROM requests q
               JOIN batches b ON b.id = q.batch_id AND b.status = 'done'
              WHERE q.status = 'delivering' AND chronicle_partition(b.id) = ANY($1)
                AND (SELECT e.event_type FROM events e
                      WHERE e.aggregate_type = 'Request' AND e.aggregate_id = q.id::text
                      ORDER BY e.sequence DESC LIMIT 1)
                    IN ('RequestDeliveryStarted', 'RequestDeliveryAttempted')
              LIMIT 100",
        )
        .bind(partitions)
        .fetch_all(&self.pool)
        .await?)
    }

    fn logged(&self, batch_id: Uuid, result: Result<(), CommandError>) {
        if let Err(error) = result {
            tracing::warn!(batch.id = %batch_id, %error, "batch delivery step failed; will retry");
        }
    }

    /// Runs a batch step; a refusal by the transition table means another pass (or the
    /// read model's lag) got there first, which is fine.
    async fn on_batch(&self, batch_id: Uuid, command: BatchCommand) -> Result<(), CommandError> {
        let context = CommandContext::system(batch_id);
        batch_step(&self.commands, &context, batch_id, command).await
    }
}

/// Runs a lifecycle `command` on the batch, taking a refusal by its transition table as
/// "already there".
///
/// # Errors
/// Any other failure of the command.
pub async fn batch_step(
    commands: &Commands,
    context: &CommandContext,
    batch_id: Uuid,
    command: BatchCommand,
) -> Result<(), CommandError> {
    let id = batch_id.to_string();
    match commands
        .execute::<Batch>(context, &id, command, &(), None)
        .await
    {
        Ok(_)
        | Err(CommandError::Rejected {
            code: ErrorCode::InvalidTransition,
            ..
        }) => Ok(()),
        Err(other) => Err(other),
    }
}
