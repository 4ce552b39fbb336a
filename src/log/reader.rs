//! Pages of committed events in log order, which no concurrent commit can invalidate.
//!
//! Log positions are handed out in commit order (every appending transaction draws them under
//! one advisory lock that PostgreSQL releases only once the commit is visible), so a reader
//! that has seen position n has seen every committed event below it: it reads `position > n`.
//! Nothing outside Chronicle's own appends (an analyst's open transaction, another
//! database's) can hold a reader back.

use std::sync::Arc;

use chronicle_aggregates::Upcasters;
use chronicle_projections::{ClientCursor, EventMetadata, LogCursor, RecordedEvent};
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use serde_json::Value;
use sqlx::PgPool;

use crate::privacy::Vault;

/// Which events a consumer wants; `None` means all.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only these aggregate types.
    pub aggregate_types: Option<Vec<String>>,
    /// Only this aggregate.
    pub aggregate_id: Option<String>,
    /// Only aggregates of this owner (as recorded with their first event).
    pub owner: Option<String>,
    /// Only these event types.
    pub event_types: Option<Vec<String>>,
    /// Only events caused by this actor.
    pub actor: Option<String>,
    /// Only events of this correlation id (one client call across aggregates).
    pub correlation_id: Option<String>,
    /// Only events recorded at or after.
    pub recorded_from: Option<DateTime<Utc>>,
    /// Only events recorded before.
    pub recorded_until: Option<DateTime<Utc>>,
}

impl LogFilter {
    /// Whether `event`, of an aggregate owned by `owner`, passes this filter: in memory what
    /// [`LogReader::read`] asks the database.
    pub fn matches(&self, event: &RecordedEvent, owner: Option<&str>) -> bool {
        let listed = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref()
                .is_none_or(|list| list.iter().any(|v| v == value))
        };
        let equal = |wanted: &Option<String>, value: &str| {
            wanted.as_deref().is_none_or(|wanted| wanted == value)
        };
        listed(&self.aggregate_types, &event.aggregate_type)
            && equal(&self.aggregate_id, &event.aggregate_id)
            && self
                .owner
                .as_deref()
                .is_none_or(|wanted| owner == Some(wanted))
            && listed(&self.event_types, &event.event_type)
            && equal(&self.actor, &event.metadata.actor)
            && equal(&self.correlation_id, &event.metadata.correlation_id)
            && self
                .recorded_from
                .is_none_or(|from| event.recorded_at >= from)
            && self
                .recorded_until
                .is_none_or(|until| event.recorded_at < until)
    }
}

/// Payload bytes (as JSON text) a page aims to stay under, so that pages of large events (a
/// bulk batch append carries up to 8 MB) do not multiply into gigabytes: parsed, events take
/// about fifteen times their text.
pub const MAX_PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// One page of the log.
#[derive(Debug, Clone)]
pub struct Page {
    /// The events, in log order.
    pub events: Vec<RecordedEvent>,
    /// The log's last position when the page was read: every event committed later has a
    /// higher one.
    pub head: i64,
    /// The page stopped early at [`MAX_PAGE_BYTES`]: more events follow at once.
    pub truncated: bool,
}

impl Page {
    /// Where a reader that got this page may continue: after its last event, or, when it
    /// was empty, at the log's head, so that a filtered reader does not rescan the events it
    /// skipped.
    pub fn next_cursor(&self, after: LogCursor) -> LogCursor {
        match self.events.last() {
            Some(last) => last.cursor,
            None => after.max(LogCursor::at(self.head)),
        }
    }
}

/// Reads the global log; cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    pool: PgPool,
    upcasters: Arc<Upcasters>,
    vault: Vault,
}

/// A row of a page: the head, and an event unless the page is empty.
#[derive(sqlx::FromRow)]
struct PageRow {
    head: i64,
    fetched: i64,
    position: Option<i64>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<i64>,
    event_type: Option<String>,
    event_version: Option<String>,
    payload: Option<Value>,
    metadata: Option<Value>,
    recorded_at: Option<DateTime<Utc>>,
    owner: Option<String>,
    payload_bytes: Option<i32>,
}

/// What the live log keeps with an event besides the event itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFacts {
    /// Its aggregate's owner (as recorded with the first event), if it has one.
    pub owner: Option<String>,
    /// Its payload's size as JSON text, as the log recorded it on append (none for events
    /// appended before sizes were kept).
    pub text_bytes: Option<i32>,
}

impl LogReader {
    /// A reader over `pool` that opens personal data with `vault` and upcasts with
    /// `upcasters`.
    pub fn new(pool: PgPool, upcasters: Arc<Upcasters>, vault: Vault) -> Self {
        Self {
            pool,
            upcasters,
            vault,
        }
    }

    /// The same reader, reading through `pool` (connections with other settings).
    #[must_use]
    pub fn through(&self, pool: PgPool) -> Self {
        Self {
            pool,
            ..self.clone()
        }
    }

    /// The rows' events, personal fields opened, upcast.
    async fn recorded_all(
        &self,
        mut rows: Vec<PageRow>,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let payloads = rows
            .iter_mut()
            .filter_map(|row| Some((row.aggregate_type.as_deref()?, row.payload.as_mut()?)));
        self.vault.open(payloads).await?;
        Ok(rows
            .into_iter()
            .filter_map(|row| self.recorded(row))
            .collect())
    }

    /// Up to `limit` committed events after `after`, in log order, and never much more than
    /// [`MAX_PAGE_BYTES`] of payload (the first event always comes, whatever its size).
    ///
    /// # Errors
    /// Any database error.
    pub async fn read(
        &self,
        after: LogCursor,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Page, sqlx::Error> {
        let (page, _) = self.page(after, filter, limit, false).await?;
        Ok(page)
    }

    /// Like [`LogReader::read`] without a filter, with each event's facts (its aggregate's
    /// owner and its payload's size) read in the same statement.
    ///
    /// # Errors
    /// Any database error.
    pub async fn read_with_owners(
        &self,
        after: LogCursor,
        limit: u32,
    ) -> Result<(Page, Vec<EventFacts>), sqlx::Error> {
        self.page(after, &LogFilter::default(), limit, true).await
    }

    async fn page(
        &self,
        after: LogCursor,
        filter: &LogFilter,
        limit: u32,
        with_owners: bool,
    ) -> Result<(Page, Vec<EventFacts>), sqlx::Error> {
        let rows: Vec<PageRow> = sqlx::query_as(
            "WITH head AS (SELECT coalesce(max(log_position), 0) AS head FROM events),
             limited AS (
                SELECT e.* FROM events e
                 WHERE e.log_position > $1
                   AND ($2::text[] IS NULL OR e.aggregate_type = ANY($2))
                   AND ($3::text IS NULL OR e.aggregate_id = $3)
                   AND ($6::text IS NULL OR EXISTS (
                        SELECT 1 FROM aggregate_owners o
                         WHERE o.aggregate_type = e.aggregate_type
                           AND o.aggregate_id = e.aggregate_id AND o.owner = $6))
                   AND ($7::text[] IS NULL OR e.event_type = ANY($7))
                   AND ($8::text IS NULL OR e.metadata ->> 'actor' = $8)
                   AND ($9::text IS NULL OR e.metadata ->> 'correlation_id' = $9)
                   AND ($10::timestamptz IS NULL OR e.recorded_at >= $10)
                   AND ($11::timestamptz IS NULL OR e.recorded_at < $11)
                 ORDER BY e.log_position
                 LIMIT $4),
             page AS (
                SELECT *,
                       sum(coalesce(payload_bytes, pg_column_size(payload))) OVER w AS running,
                       row_number() OVER w AS n
                  FROM limited WINDOW w AS (ORDER BY log_position))
             SELECT h.head, (SELECT count(*) FROM limited) AS fetched,
                    p.log_position AS position, p.aggregate_type, p.aggregate_id, p.sequence,
                    p.event_type, p.event_version, p.payload, p.metadata, p.recorded_at,
                    p.payload_bytes, (SELECT o.owner FROM aggregate_owners o
                      WHERE $12 AND o.aggregate_type = p.aggregate_type
                        AND o.aggregate_id = p.aggregate_id) AS owner
               FROM head h
               LEFT JOIN page p ON p.n = 1 OR p.running <= $5
              ORDER BY p.log_position",
        )
        .bind(after.position)
        .bind(filter.aggregate_types.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(i64::from(limit))
        .bind(MAX_PAGE_BYTES)
        .bind(filter.owner.as_deref())
        .bind(filter.event_types.as_deref())
        .bind(filter.actor.as_deref())
        .bind(filter.correlation_id.as_deref())
        .bind(filter.recorded_from)
        .bind(filter.recorded_until)
        .bind(with_owners)
        .fetch_all(&self.pool)
        .await?;
        let head = rows.first().map_or(0, |row| row.head);
        let fetched = rows.first().map_or(0, |row| row.fetched);
        let facts = rows
            .iter()
            .filter(|row| row.position.is_some())
            .map(|row| EventFacts {
                owner: row.owner.clone(),
                text_bytes: row.payload_bytes,
            })
            .collect();
        let events = self.recorded_all(rows).await?;
        let truncated = usize::try_from(fetched).unwrap_or_default() > events.len();
        let page = Page {
            events,
            head,
            truncated,
        };
        Ok((page, facts))
    }

    /// The cursor of the newest committed event: everything committed later sorts after it.
    ///
    /// # Errors
    /// Any database error.
    pub async fn head(&self) -> Result<LogCursor, sqlx::Error> {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(log_position), 0) FROM events")
            .fetch_one(&self.pool)
            .await?;
        Ok(LogCursor::at(head))
    }

    /// The cursor a client's cursor stands for: a current one as it is; one of the old
    /// (transaction id, position) order as the last event at or before it in that order.
    ///
    /// # Errors
    /// Any database error.
    pub async fn resolve(&self, cursor: ClientCursor) -> Result<LogCursor, sqlx::Error> {
        let (transaction_id, position) = match cursor {
            ClientCursor::Current(current) => return Ok(current),
            ClientCursor::Legacy {
                transaction_id,
                position,
            } => (transaction_id, position),
        };
        let resolved: Option<i64> = sqlx::query_scalar(
            "SELECT log_position FROM events
              WHERE (transaction_id::text::bigint, position) <= ($1, $2)
              ORDER BY transaction_id DESC, position DESC LIMIT 1",
        )
        .bind(transaction_id)
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        Ok(LogCursor::at(resolved.unwrap_or(0)))
    }

    /// The events of one aggregate from `from_sequence` on, in sequence order, up to
    /// `until_sequence` and recorded before `until`, at most `limit`.
    ///
    /// # Errors
    /// Any database error.
    pub async fn aggregate_events(
        &self,
        aggregate: (&str, &str),
        from_sequence: i64,
        until: (Option<i64>, Option<DateTime<Utc>>),
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows: Vec<PageRow> = sqlx::query_as(
            "SELECT 0::bigint AS head, 0::bigint AS fetched, log_position AS position,
                    aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                    metadata, recorded_at, NULL::text AS owner, payload_bytes
               FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence >= $3
                AND ($4::bigint IS NULL OR sequence <= $4)
                AND ($5::timestamptz IS NULL OR recorded_at <= $5)
              ORDER BY sequence LIMIT $6",
        )
        .bind(aggregate.0)
        .bind(aggregate.1)
        .bind(from_sequence)
        .bind(until.0)
        .bind(until.1)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        self.recorded_all(rows).await
    }

    fn recorded(&self, row: PageRow) -> Option<RecordedEvent> {
        let stored = SerializedEvent::new(
            row.aggregate_id?,
            usize::try_from(row.sequence?).unwrap_or_default(),
            row.aggregate_type?,
            row.event_type?,
            row.event_version?,
            row.payload?,
            row.metadata?,
        );
        let current = self.upcasters.upcast(stored);
        Some(RecordedEvent {
            cursor: LogCursor::at(row.position?),
            metadata: EventMetadata::from_value(&current.metadata),
            sequence: i64::try_from(current.sequence).unwrap_or_default(),
            aggregate_type: current.aggregate_type,
            aggregate_id: current.aggregate_id,
            event_type: current.event_type,
            event_version: current.event_version,
            payload: current.payload,
            recorded_at: row.recorded_at?,
        })
    }
}
