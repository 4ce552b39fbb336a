//! The global event log over GraphQL: `eventLog` pages and the `events` subscription.

use async_graphql::connection::{Connection, CursorType};
use async_graphql::{Context, InputObject, Json, Object, SimpleObject, Subscription};
use chronicle_projections::{ClientCursor, CursorError, LogCursor, RecordedEvent};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde_json::Value;
use uuid::Uuid;

use super::pagination::{connection, page_size};
use super::{ApiError, Caller};
use crate::log::{LiveLog, LogFilter};
use crate::reads::Reads;

/// One committed event, as it stands in the global log.
#[derive(SimpleObject)]
pub(crate) struct LogEvent {
    /// Opaque position in the log; pass it as `after` to continue behind this event.
    cursor: String,
    /// Global position (unique; increasing in allocation order, not commit order).
    position: i64,
    /// The aggregate's type, e.g. `Batch`.
    aggregate_type: String,
    /// The aggregate's id.
    aggregate_id: String,
    /// 1-based, gap-free position within the aggregate.
    sequence: i64,
    /// The event's name.
    event_type: String,
    /// The payload's version (after upcasting to the current shape).
    event_version: String,
    /// The event's body.
    payload: Json<Value>,
    /// Who and what caused the event.
    metadata: LogEventMetadata,
    /// When the event was appended.
    recorded_at: DateTime<Utc>,
}

/// Who and what caused an event.
#[derive(SimpleObject)]
pub(crate) struct LogEventMetadata {
    /// The client id that sent the command, or `system`.
    actor: String,
    /// Shared by everything one client call set in motion.
    correlation_id: String,
    /// The event that triggered the command, when a worker sent it.
    causation_id: Option<String>,
    /// The command that produced the event.
    command_id: String,
}

impl From<RecordedEvent> for LogEvent {
    fn from(event: RecordedEvent) -> Self {
        Self {
            cursor: event.cursor.to_string(),
            position: event.cursor.position,
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_version: event.event_version,
            payload: Json(event.payload),
            metadata: LogEventMetadata {
                actor: event.metadata.actor,
                correlation_id: event.metadata.correlation_id,
                causation_id: event.metadata.causation_id,
                command_id: event.metadata.command_id,
            },
            recorded_at: event.recorded_at,
        }
    }
}

/// A cursor in a connection's edges.
pub(crate) struct EdgeCursor(LogCursor);

impl CursorType for EdgeCursor {
    type Error = CursorError;

    fn decode_cursor(text: &str) -> Result<Self, Self::Error> {
        text.parse().map(Self)
    }

    fn encode_cursor(&self) -> String {
        self.0.to_string()
    }
}

/// One aggregate's events — from its start, or after the cursor `after` — then live: what
/// every per-aggregate subscription follows once the caller may see the aggregate.
///
/// # Errors
/// `VALIDATION` for a malformed cursor.
pub(crate) async fn aggregate_tail(
    ctx: &Context<'_>,
    aggregate_type: &str,
    id: Uuid,
    after: Option<&str>,
) -> Result<impl Stream<Item = RecordedEvent> + Send + 'static, ApiError> {
    let start = resolve_after(ctx, after).await?.unwrap_or(LogCursor::START);
    let filter = filter(Some(vec![aggregate_type.to_owned()]), Some(id.to_string()));
    Ok(ctx.data_unchecked::<LiveLog>().tail(start, filter))
}

/// The cursor a client's `after` names; one of the log's old order is resolved to the
/// current one.
///
/// # Errors
/// `VALIDATION` for a malformed cursor; a database error resolving an old one.
pub(crate) async fn resolve_after(
    ctx: &Context<'_>,
    after: Option<&str>,
) -> Result<Option<LogCursor>, ApiError> {
    let Some(after) = after else {
        return Ok(None);
    };
    let cursor: ClientCursor = after.parse()?;
    Ok(Some(
        ctx.data_unchecked::<Reads>().log.resolve(cursor).await?,
    ))
}

fn filter(aggregate_types: Option<Vec<String>>, aggregate_id: Option<String>) -> LogFilter {
    LogFilter {
        aggregate_types,
        aggregate_id,
        ..LogFilter::default()
    }
}

/// Narrows the log; all fields optional. With `correlationId` the log is the correlation
/// view: everything one client call set in motion, across aggregates, in order.
#[derive(InputObject, Default)]
pub(crate) struct LogFilterInput {
    /// Only these event types, e.g. `BatchClosed`.
    event_types: Option<Vec<String>>,
    /// Only events caused by this actor (a client id, or `system`).
    actor: Option<String>,
    /// Only events of this correlation id.
    correlation_id: Option<String>,
    /// Only events recorded at or after.
    recorded_from: Option<DateTime<Utc>>,
    /// Only events recorded before.
    recorded_until: Option<DateTime<Utc>>,
}

/// Log queries.
#[derive(Default)]
pub(crate) struct EventLogQuery;

#[Object]
impl EventLogQuery {
    /// Committed events of your aggregates (an admin's: all) in log order, forward from `after`. Every event committed before the
    /// page was read appears exactly once across pages; later commits sort after the cursor.
    /// Errors: `VALIDATION` (bad cursor or page size).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn event_log(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Continue after this cursor; from the start when omitted.")] after: Option<
            String,
        >,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Only events of these aggregate types.")] aggregate_types: Option<
            Vec<String>,
        >,
        #[graphql(desc = "Narrows by event type, actor, correlation id and time.")] filter: Option<
            LogFilterInput,
        >,
    ) -> Result<Connection<EdgeCursor, LogEvent>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let size = page_size(first)?;
        let after = resolve_after(ctx, after.as_deref()).await?;
        let limit = u32::try_from(size + 1).unwrap_or(u32::MAX);
        let narrowed = filter.unwrap_or_default();
        let log_filter = LogFilter {
            aggregate_types,
            event_types: narrowed.event_types,
            actor: narrowed.actor,
            correlation_id: narrowed.correlation_id,
            recorded_from: narrowed.recorded_from,
            recorded_until: narrowed.recorded_until,
            owner: caller.scope().map(str::to_owned),
            ..LogFilter::default()
        };
        let page = ctx
            .data_unchecked::<Reads>()
            .log
            .read(after.unwrap_or(LogCursor::START), &log_filter, limit)
            .await?;
        let more = page.truncated;
        Ok(connection(
            page.events,
            size,
            after.is_some(),
            more,
            |event| (EdgeCursor(event.cursor), LogEvent::from(event)),
        ))
    }
}

/// Log subscriptions.
#[derive(Default)]
pub(crate) struct EventLogSubscription;

#[Subscription]
impl EventLogSubscription {
    /// Events of your aggregates (an admin's: all) after `after` (or from now, when omitted),
    /// catching up first and then live.
    /// Reconnect with the last received `cursor` to miss nothing and see nothing twice.
    /// Errors: `VALIDATION` (bad cursor).
    async fn events(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Resume after this cursor; from the current end when omitted.")]
        after: Option<String>,
        #[graphql(desc = "Only events of these aggregate types.")] aggregate_types: Option<
            Vec<String>,
        >,
        #[graphql(desc = "Only events of this aggregate.")] aggregate_id: Option<String>,
    ) -> Result<impl Stream<Item = LogEvent>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let live = ctx.data_unchecked::<LiveLog>();
        let start = match resolve_after(ctx, after.as_deref()).await? {
            Some(cursor) => cursor,
            None => live.head(),
        };
        let scoped = LogFilter {
            owner: caller.scope().map(str::to_owned),
            ..filter(aggregate_types, aggregate_id)
        };
        let events = live.tail(start, scoped);
        Ok(futures::StreamExt::map(events, LogEvent::from))
    }
}
