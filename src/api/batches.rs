//! Batches over GraphQL: owner actions, queries, and each batch's requests.

use async_graphql::connection::Connection;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use chronicle_aggregates::request::RequestStatus;
use chronicle_projections::batches::{self, BatchFilter, BatchRow};
use chronicle_projections::requests::RequestFilter;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::outcome::{run_action, CommandOutcome};
use super::pagination::{connection, keyset_page, KeysetCursor, KeysetPage};
use super::requests::{request_page, LlmRequest};
use super::{ApiError, Caller};
use crate::reads::Reads;

/// The requests of one (owner, endpoint, model) that go to the provider together.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct Batch {
    /// The batch's id.
    id: Uuid,
    /// The endpoint path.
    endpoint: String,
    /// The model.
    model: String,
    /// `building`, `uploading`, `uploaded`, `provider_processing`, `provider_completed`,
    /// `downloading`, `ready_to_deliver`, `delivering`, `done`, `failed`, `cancelled` or
    /// `expired`.
    status: String,
    /// Requests in the batch.
    request_count: i64,
    /// Bytes of the input file it uploads.
    size_bytes: i64,
    /// Why it closed: `full`, `max_wait`, `max_age` or `flushed`.
    close_reason: Option<String>,
    /// The batch that follows for the same endpoint and model, once closed.
    successor: Option<Uuid>,
    /// The provider's batch id, once submitted.
    provider_batch_id: Option<String>,
    /// Version of the batch's event stream that this view reflects.
    version: i64,
    /// When it opened.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
    #[graphql(skip)]
    owner: String,
}

impl From<BatchRow> for Batch {
    fn from(row: BatchRow) -> Self {
        Self {
            id: row.id,
            endpoint: row.endpoint,
            model: row.model,
            status: row.status,
            request_count: row.request_count,
            size_bytes: row.size_bytes,
            close_reason: row.close_reason,
            successor: row.successor,
            provider_batch_id: row.provider_batch_id,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            owner: row.owner,
        }
    }
}

/// How many of a batch's requests are in each status.
#[derive(SimpleObject, Default)]
pub(crate) struct RequestCounts {
    pending: i64,
    provider_processing: i64,
    provider_processed: i64,
    delivering: i64,
    delivered: i64,
    failed: i64,
    delivery_failed: i64,
    expired: i64,
    cancelled: i64,
    consumed: i64,
    consume_failed: i64,
}

impl RequestCounts {
    fn from_rows(rows: Vec<(String, i64)>) -> Self {
        let mut counts = Self::default();
        for (status, n) in rows {
            let slot = match RequestStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == status)
            {
                Some(RequestStatus::Pending) => &mut counts.pending,
                Some(RequestStatus::ProviderProcessing) => &mut counts.provider_processing,
                Some(RequestStatus::ProviderProcessed) => &mut counts.provider_processed,
                Some(RequestStatus::Delivering) => &mut counts.delivering,
                Some(RequestStatus::Delivered) => &mut counts.delivered,
                Some(RequestStatus::Failed) => &mut counts.failed,
                Some(RequestStatus::DeliveryFailed) => &mut counts.delivery_failed,
                Some(RequestStatus::Expired) => &mut counts.expired,
                Some(RequestStatus::Cancelled) => &mut counts.cancelled,
                Some(RequestStatus::Consumed) => &mut counts.consumed,
                Some(RequestStatus::ConsumeFailed) => &mut counts.consume_failed,
                None => continue,
            };
            *slot = n;
        }
        counts
    }
}

#[ComplexObject]
impl Batch {
    /// How many of its requests are in each status (as the `requests` read model has them).
    async fn request_counts(&self, ctx: &Context<'_>) -> Result<RequestCounts, ApiError> {
        let pool = &ctx.data_unchecked::<Reads>().pool;
        let rows = batches::request_counts(pool, self.id).await?;
        Ok(RequestCounts::from_rows(rows))
    }

    /// The batch's requests, newest first.
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn requests(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, LlmRequest>, ApiError> {
        let filter = RequestFilter {
            owner: Some(self.owner.clone()),
            batch_id: Some(self.id),
            ..RequestFilter::default()
        };
        request_page(ctx, filter, first, after).await
    }
}

/// Narrows a batch list; all fields optional.
#[derive(InputObject, Default)]
pub(crate) struct BatchFilterInput {
    /// Only this status.
    status: Option<String>,
    /// Only this model.
    model: Option<String>,
    /// Only this endpoint path.
    endpoint: Option<String>,
    /// Opened at or after.
    created_from: Option<DateTime<Utc>>,
    /// Opened before.
    created_until: Option<DateTime<Utc>>,
}

/// Batch queries.
#[derive(Default)]
pub(crate) struct BatchQuery;

#[Object]
impl BatchQuery {
    /// One of your batches. Errors: `NOT_FOUND`.
    async fn batch(&self, ctx: &Context<'_>, id: Uuid) -> Result<Batch, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        batches::get(&ctx.data_unchecked::<Reads>().pool, caller.scope(), id)
            .await?
            .map(Batch::from)
            .ok_or(ApiError::NotFound("batch"))
    }

    /// Your batches, newest first. Errors: `VALIDATION` (bad cursor or page size).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn batches(
        &self,
        ctx: &Context<'_>,
        filter: Option<BatchFilterInput>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, Batch>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let input = filter.unwrap_or_default();
        let filter = BatchFilter {
            owner: caller.scope().map(str::to_owned),
            status: input.status,
            model: input.model,
            endpoint: input.endpoint,
            created_from: input.created_from,
            created_until: input.created_until,
        };
        let KeysetPage { size, after, limit } = keyset_page(first, after.as_deref())?;
        let rows =
            batches::list(&ctx.data_unchecked::<Reads>().pool, &filter, after, limit).await?;
        Ok(connection(rows, size, after.is_some(), false, |row| {
            (KeysetCursor(row.created_at, row.id), Batch::from(row))
        }))
    }
}

/// Batch mutations.
#[derive(Default)]
pub(crate) struct BatchMutation;

#[Object]
impl BatchMutation {
    /// Closes a building batch now, so it goes to the provider without waiting.
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION` (not building, or empty), `CONFLICT`.
    async fn flush_batch(
        &self,
        ctx: &Context<'_>,
        batch_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        run_action(ctx, idempotency_key, &("flushBatch", batch_id), |actions, context, key| async move {
            actions.flush_batch(&context, batch_id, key).await
        })
        .await
    }

    /// Cancels a batch that has not finished at the provider.
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    async fn cancel_batch(
        &self,
        ctx: &Context<'_>,
        batch_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        run_action(ctx, idempotency_key, &("cancelBatch", batch_id), |actions, context, key| async move {
            actions.cancel_batch(&context, batch_id, key).await
        })
        .await
    }
}
