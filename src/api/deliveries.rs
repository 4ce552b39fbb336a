//! Delivery over GraphQL: each request's attempts, redelivery, and the webhook signing secret.

use async_graphql::{Context, Object, SimpleObject};
use chronicle_projections::delivery_attempts::DeliveryAttemptRow;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::outcome::{idempotency, run_action, CommandOutcome};
use super::{ApiError, Caller};
use crate::delivery::WebhookSecrets;
use crate::llm::LlmActions;

/// One attempt to deliver a result.
#[derive(SimpleObject)]
pub(crate) struct DeliveryAttempt {
    /// The round, from 1; each redelivery starts a new one.
    round: i32,
    /// The attempt within its round, from 1.
    number: i32,
    /// The round's delivery id, sent with every attempt (`Idempotency-Key`).
    delivery_id: Uuid,
    /// When it started.
    started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    duration_ms: i64,
    /// The receiver's HTTP status, if it answered.
    status_code: Option<i32>,
    /// What went wrong, if anything.
    error: Option<String>,
    /// `delivered`, `retry` or `failed`.
    outcome: String,
    /// When the next attempt was due, after a `retry`.
    retry_at: Option<DateTime<Utc>>,
}

impl From<DeliveryAttemptRow> for DeliveryAttempt {
    fn from(row: DeliveryAttemptRow) -> Self {
        Self {
            round: row.round,
            number: row.number,
            delivery_id: row.delivery_id,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            status_code: row.status_code,
            error: row.error,
            outcome: row.outcome,
            retry_at: row.retry_at,
        }
    }
}

/// What `redeliverBatch` started.
#[derive(SimpleObject)]
pub(crate) struct BatchRedelivery {
    /// The batch.
    batch_id: Uuid,
    /// Results that started a new delivery round.
    requests: u64,
}

/// Delivery queries.
#[derive(Default)]
pub(crate) struct DeliveryQuery;

#[Object]
impl DeliveryQuery {
    /// The secret your webhook deliveries are signed with (`Chronicle-Signature` header:
    /// HMAC-SHA256 over `"<t>.<body>"`, see the README). Created on first use.
    async fn webhook_secret(&self, ctx: &Context<'_>) -> Result<String, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let secrets = ctx.data_unchecked::<std::sync::Arc<WebhookSecrets>>();
        Ok(secrets.for_owner(&caller.actor).await?)
    }
}

/// Delivery mutations.
#[derive(Default)]
pub(crate) struct DeliveryMutation;

#[Object]
impl DeliveryMutation {
    /// Delivers a pushed result again, in a new round with a new delivery id, once its last
    /// round ended (delivered or delivery failed).
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    async fn redeliver(
        &self,
        ctx: &Context<'_>,
        request_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        run_action(
            ctx,
            idempotency_key,
            &("redeliver", request_id),
            |actions, context, key| async move { actions.redeliver(&context, request_id, key).await },
        )
        .await
    }

    /// Delivers again a batch's pushed results whose delivery failed (all delivered ones too
    /// with `onlyFailed: false`). Errors: `NOT_FOUND`, `CONFLICT`.
    async fn redeliver_batch(
        &self,
        ctx: &Context<'_>,
        batch_id: Uuid,
        #[graphql(default = true)] only_failed: bool,
        idempotency_key: Option<String>,
    ) -> Result<BatchRedelivery, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let key = idempotency(idempotency_key, &("redeliverBatch", batch_id, only_failed))?;
        let requests = ctx
            .data_unchecked::<LlmActions>()
            .redeliver_batch(&caller.command_context(), batch_id, only_failed, key)
            .await?;
        Ok(BatchRedelivery { batch_id, requests })
    }
}
