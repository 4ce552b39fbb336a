//! The group's statements: one INSERT of all its events, one of all its snapshots.

use std::collections::HashMap;

use chronicle_projections::LogCursor;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use serde_json::Value;
use sqlx::PgConnection;

use super::Failure;
use crate::store::append::{to_i64, Append};

/// An append's payloads as stored: personal fields sealed.
pub(super) struct Sealed {
    pub(super) events: Vec<Value>,
    pub(super) snapshot: Option<Value>,
}

/// Where each appended event landed, by (aggregate type, id, sequence): its log position
/// and when it was recorded.
pub(super) type Stored<'a> = HashMap<(&'a str, &'a str, i64), (i64, DateTime<Utc>)>;

/// Where `event` of `append` landed.
pub(super) fn landed(
    stored: &Stored<'_>,
    append: &Append,
    event: &SerializedEvent,
) -> Option<(LogCursor, DateTime<Utc>)> {
    let key = (
        append.aggregate_type,
        append.aggregate_id.as_str(),
        to_i64(event.sequence),
    );
    let (position, recorded_at) = stored.get(&key)?;
    Some((LogCursor::at(*position), *recorded_at))
}

/// Inserts every event of the group in one statement (sealed payloads where there are).
pub(super) async fn insert_events<'a>(
    conn: &mut PgConnection,
    appends: &[&'a Append],
    sealed: &[Option<Sealed>],
) -> Result<Stored<'a>, Failure> {
    let events = || appends.iter().flat_map(|a| a.events.iter());
    let payloads: Vec<&Value> = appends
        .iter()
        .zip(sealed)
        .flat_map(|(append, sealed)| match sealed {
            Some(sealed) => sealed.events.iter().collect::<Vec<_>>(),
            None => append.events.iter().map(|e| &e.payload).collect(),
        })
        .collect();
    let rows: Vec<(String, String, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                              $6::jsonb[], $7::jsonb[])
         RETURNING aggregate_type, aggregate_id, sequence, log_position, recorded_at",
    )
    .bind(
        events()
            .map(|e| e.aggregate_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events()
            .map(|e| e.aggregate_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| to_i64(e.sequence)).collect::<Vec<_>>())
    .bind(events().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(
        events()
            .map(|e| e.event_version.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(payloads)
    .bind(events().map(|e| &e.metadata).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    if rows.len() != events().count() {
        let lost = "the events INSERT returned fewer rows than it was given";
        return Err(Failure::Database(sqlx::Error::Protocol(lost.into())));
    }
    let keys: HashMap<(&str, &str), &'a Append> = appends
        .iter()
        .map(|a| ((a.aggregate_type, a.aggregate_id.as_str()), *a))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|(kind, id, sequence, position, at)| {
            let append = keys.get(&(kind.as_str(), id.as_str()))?;
            Some((
                (
                    append.aggregate_type,
                    append.aggregate_id.as_str(),
                    sequence,
                ),
                (position, at),
            ))
        })
        .collect())
}

/// Writes the group's snapshots in one statement, each unless a newer one exists (which
/// means another writer appended first).
pub(super) async fn write_snapshots(
    conn: &mut PgConnection,
    appends: &[&Append],
    sealed: &[Option<Sealed>],
) -> Result<(), Failure> {
    let snapshots: Vec<(&Append, &Value)> = appends
        .iter()
        .zip(sealed)
        .filter_map(|(append, sealed)| {
            let snapshot = append.snapshot.as_ref()?;
            let payload = sealed
                .as_ref()
                .and_then(|s| s.snapshot.as_ref())
                .unwrap_or(&snapshot.payload);
            Some((*append, payload))
        })
        .collect();
    if snapshots.is_empty() {
        return Ok(());
    }
    let field = |f: fn(&Append) -> i64| snapshots.iter().map(|(a, _)| f(a)).collect::<Vec<_>>();
    let written = sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                current_snapshot, payload)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::jsonb[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                current_snapshot = EXCLUDED.current_snapshot,
                payload = EXCLUDED.payload
          WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(
        snapshots
            .iter()
            .map(|(a, _)| a.aggregate_type)
            .collect::<Vec<_>>(),
    )
    .bind(
        snapshots
            .iter()
            .map(|(a, _)| a.aggregate_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(field(|a| {
        a.snapshot.as_ref().map_or(0, |s| s.last_sequence)
    }))
    .bind(field(|a| a.snapshot.as_ref().map_or(0, |s| s.counter)))
    .bind(
        snapshots
            .iter()
            .map(|(_, payload)| *payload)
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    if written.rows_affected() == snapshots.len() as u64 {
        Ok(())
    } else {
        Err(Failure::StaleSnapshot)
    }
}
