//! Live updates of one batch or request: `batchUpdated` and `requestUpdated`, resumable from
//! a log cursor like the generic `events` subscription.

use async_graphql::{Context, SimpleObject, Subscription};
use chronicle_aggregates::batch::BatchEvent;
use chronicle_aggregates::request::RequestEvent;
use chronicle_projections::{LogCursor, RecordedEvent};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::event_log::aggregate_tail;
use super::{ApiError, Caller};
use crate::llm::LlmActions;
use crate::log::{LiveLog, LogFilter};

/// One change of a batch or request.
#[derive(SimpleObject)]
pub(crate) struct AggregateUpdate {
    /// Resume after this update with `after`.
    cursor: String,
    /// The batch's or request's id.
    id: String,
    /// Its version after the change.
    version: i64,
    /// The event, e.g. `BatchClosed`.
    event_type: String,
    /// The state after the change (unreadable events leave it empty).
    status: Option<String>,
    /// When the change was recorded.
    recorded_at: DateTime<Utc>,
}

fn update(event: RecordedEvent) -> AggregateUpdate {
    let status = match event.aggregate_type.as_str() {
        "Batch" => event
            .decode::<BatchEvent>()
            .ok()
            .map(|e| e.status().as_str()),
        _ => event
            .decode::<RequestEvent>()
            .ok()
            .map(|e| e.status().as_str()),
    };
    AggregateUpdate {
        cursor: event.cursor.to_string(),
        id: event.aggregate_id,
        version: event.sequence,
        event_type: event.event_type,
        status: status.map(str::to_owned),
        recorded_at: event.recorded_at,
    }
}

async fn updates(
    ctx: &Context<'_>,
    aggregate_type: &'static str,
    id: Uuid,
    after: Option<String>,
) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    ctx.data_unchecked::<LlmActions>()
        .check_owner(caller.scope(), aggregate_type, id)
        .await?;
    Ok(aggregate_tail(ctx, aggregate_type, id, after.as_deref())
        .await?
        .map(update))
}

/// Changes of all the caller's batches or requests, after `after` or from now.
async fn owned_updates(
    ctx: &Context<'_>,
    aggregate_type: &'static str,
    after: Option<String>,
) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let live = ctx.data_unchecked::<LiveLog>();
    let start: LogCursor = match super::event_log::resolve_after(ctx, after.as_deref()).await? {
        Some(cursor) => cursor,
        None => live.head(),
    };
    let filter = LogFilter {
        aggregate_types: Some(vec![aggregate_type.to_owned()]),
        owner: caller.scope().map(str::to_owned),
        ..LogFilter::default()
    };
    Ok(live.tail(start, filter).map(update))
}

/// Batch and request subscriptions.
#[derive(Default)]
pub(crate) struct LlmSubscription;

#[Subscription]
impl LlmSubscription {
    /// Every change of one of your batches: its history first (or after `after`), then live.
    /// Errors: `NOT_FOUND`, `VALIDATION` (bad cursor).
    async fn batch_updated(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(desc = "Resume after this cursor; from the batch's start when omitted.")]
        after: Option<String>,
    ) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
        updates(ctx, "Batch", id, after).await
    }

    /// Every change of one of your requests: its history first (or after `after`), then live.
    /// Errors: `NOT_FOUND`, `VALIDATION` (bad cursor).
    async fn request_updated(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(desc = "Resume after this cursor; from the request's start when omitted.")]
        after: Option<String>,
    ) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
        updates(ctx, "Request", id, after).await
    }

    /// Every change of any of your batches, from now (or after `after`), live.
    /// Errors: `VALIDATION` (bad cursor).
    async fn batches_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Resume after this cursor; from now when omitted.")] after: Option<String>,
    ) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
        owned_updates(ctx, "Batch", after).await
    }

    /// Every change of any of your requests, from now (or after `after`), live.
    /// Errors: `VALIDATION` (bad cursor).
    async fn requests_updated(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Resume after this cursor; from now when omitted.")] after: Option<String>,
    ) -> Result<impl Stream<Item = AggregateUpdate>, ApiError> {
        owned_updates(ctx, "Request", after).await
    }
}
