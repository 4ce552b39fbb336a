//! `aggregate_index`: every aggregate with its current version and last change.
//!
//! Generic over aggregate types, so auditors can list what exists and the API can wait until
//! a write has been projected (its version is visible here).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind `aggregate_index`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AggregateIndex;

struct Row<'a> {
    version: i64,
    last_event_type: &'a str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[async_trait]
impl Projector for AggregateIndex {
    fn name(&self) -> &'static str {
        "aggregate_index"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["aggregate_index"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        // One upsert per page: the last event of each aggregate in the page wins.
        let mut latest: BTreeMap<(&str, &str), Row<'_>> = BTreeMap::new();
        for event in events {
            let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
            let row = latest.entry(key).or_insert(Row {
                version: event.sequence,
                last_event_type: &event.event_type,
                created_at: event.recorded_at,
                updated_at: event.recorded_at,
            });
            if event.sequence >= row.version {
                row.version = event.sequence;
                row.last_event_type = &event.event_type;
                row.updated_at = event.recorded_at;
            }
        }
        let mut types = Vec::with_capacity(latest.len());
        let mut ids = Vec::with_capacity(latest.len());
        let mut versions = Vec::with_capacity(latest.len());
        let mut event_types = Vec::with_capacity(latest.len());
        let mut created = Vec::with_capacity(latest.len());
        let mut updated = Vec::with_capacity(latest.len());
        for ((aggregate_type, aggregate_id), row) in latest {
            types.push(aggregate_type);
            ids.push(aggregate_id);
            versions.push(row.version);
            event_types.push(row.last_event_type);
            created.push(row.created_at);
            updated.push(row.updated_at);
        }
        sqlx::query(
            "INSERT INTO aggregate_index
                    (aggregate_type, aggregate_id, version, last_event_type, created_at, updated_at)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[],
                                  $5::timestamptz[], $6::timestamptz[])
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                SET version = EXCLUDED.version,
                    last_event_type = EXCLUDED.last_event_type,
                    updated_at = EXCLUDED.updated_at",
        )
        .bind(types)
        .bind(ids)
        .bind(versions)
        .bind(event_types)
        .bind(created)
        .bind(updated)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// The projected version of an aggregate, if the projector has seen it.
///
/// # Errors
/// Any database error.
pub async fn version(
    db: impl PgExecutor<'_>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT version FROM aggregate_index WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .fetch_optional(db)
    .await
}
