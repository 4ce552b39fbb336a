//! Pages of committed events in an order no concurrent commit can invalidate.
//!
//! Positions come from a sequence and are allocated before commit, so a transaction that
//! allocated position 10 may commit after one that allocated 11: a reader that remembered
//! "11" would never see 10. Instead we read only rows written by transactions older than the
//! oldest one still running (`pg_snapshot_xmin`), which are all settled, and order by
//! (transaction id, position). Every later commit then sorts after the cursor.

use std::sync::Arc;

use chronicle_aggregates::Upcasters;
use chronicle_projections::{EventMetadata, LogCursor, RecordedEvent};
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use serde_json::Value;
use sqlx::PgPool;

/// Which events a consumer wants; `None` means all.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    /// Only these aggregate types.
    pub aggregate_types: Option<Vec<String>>,
    /// Only this aggregate.
    pub aggregate_id: Option<String>,
}

/// Reads the global log; cheap to clone.
#[derive(Clone)]
pub struct LogReader {
    pool: PgPool,
    upcasters: Arc<Upcasters>,
}

type Row = (
    i64,
    i64,
    String,
    String,
    i64,
    String,
    String,
    Value,
    Value,
    DateTime<Utc>,
);

impl LogReader {
    /// A reader over `pool` that upcasts with `upcasters`.
    pub fn new(pool: PgPool, upcasters: Arc<Upcasters>) -> Self {
        Self { pool, upcasters }
    }

    /// Up to `limit` settled events after `after`, in log order.
    ///
    /// # Errors
    /// Any database error.
    pub async fn read(
        &self,
        after: LogCursor,
        filter: &LogFilter,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>, sqlx::Error> {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT transaction_id::text::bigint, position, aggregate_type, aggregate_id,
                    sequence, event_type, event_version, payload, metadata, recorded_at
               FROM events
              WHERE (transaction_id, position) > ($1::bigint::text::xid8, $2)
                AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                AND ($3::text[] IS NULL OR aggregate_type = ANY($3))
                AND ($4::text IS NULL OR aggregate_id = $4)
              ORDER BY transaction_id, position
              LIMIT $5",
        )
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(filter.aggregate_types.as_deref())
        .bind(filter.aggregate_id.as_deref())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|row| self.recorded(row)).collect())
    }

    /// The cursor of the newest settled event: everything committed later sorts after it.
    ///
    /// # Errors
    /// Any database error.
    pub async fn head(&self) -> Result<LogCursor, sqlx::Error> {
        let head: Option<(i64, i64)> = sqlx::query_as(
            "SELECT transaction_id::text::bigint, position FROM events
              WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
              ORDER BY transaction_id DESC, position DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(
            head.map_or(LogCursor::START, |(transaction_id, position)| LogCursor {
                transaction_id,
                position,
            }),
        )
    }

    fn recorded(&self, row: Row) -> RecordedEvent {
        let (transaction_id, position, aggregate_type, aggregate_id, sequence, event_type) =
            (row.0, row.1, row.2, row.3, row.4, row.5);
        let (event_version, payload, metadata, recorded_at) = (row.6, row.7, row.8, row.9);
        let stored = SerializedEvent::new(
            aggregate_id,
            usize::try_from(sequence).unwrap_or_default(),
            aggregate_type,
            event_type,
            event_version,
            payload,
            metadata,
        );
        let current = self.upcasters.upcast(stored);
        RecordedEvent {
            cursor: LogCursor {
                transaction_id,
                position,
            },
            metadata: EventMetadata::from_value(&current.metadata),
            aggregate_type: current.aggregate_type,
            aggregate_id: current.aggregate_id,
            sequence,
            event_type: current.event_type,
            event_version: current.event_version,
            payload: current.payload,
            recorded_at,
        }
    }
}
