//! The group's write: one statement inserts all its events, then writes all its snapshots.

use std::collections::HashMap;

use chronicle_projections::LogCursor;
use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use serde_json::Value;
use sqlx::PgConnection;

use super::Failure;
use crate::log::EventFacts;
use crate::store::append::{to_i64, Append};

/// An append's payloads as stored: personal fields sealed.
pub(super) struct Sealed {
    pub(super) events: Vec<Value>,
    pub(super) snapshot: Option<Value>,
}

/// Where an appended event landed: its log position, when it was recorded, and what the
/// live log keeps with it (its aggregate's owner, its payload's size).
pub(super) struct Landed {
    pub(super) position: i64,
    pub(super) at: DateTime<Utc>,
    pub(super) facts: EventFacts,
}

impl Landed {
    pub(super) fn cursor(&self) -> LogCursor {
        LogCursor::at(self.position)
    }
}

/// Where each appended event landed, by (aggregate type, id, sequence).
pub(super) type Stored<'a> = HashMap<(&'a str, &'a str, i64), Landed>;

/// Where `event` of `append` landed.
pub(super) fn landed<'s>(
    stored: &'s Stored<'s>,
    append: &'s Append,
    event: &SerializedEvent,
) -> Option<&'s Landed> {
    let key = (
        append.aggregate_type,
        append.aggregate_id.as_str(),
        to_i64(event.sequence),
    );
    stored.get(&key)
}

/// The group's snapshots as columns: type, id, last sequence, counter, payload (sealed
/// where it holds personal data).
#[derive(Default)]
struct Snapshots<'a> {
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    last_sequences: Vec<i64>,
    counters: Vec<i64>,
    payloads: Vec<&'a Value>,
}

impl<'a> Snapshots<'a> {
    fn of(appends: &[&'a Append], sealed: &'a [Option<Sealed>]) -> Self {
        let mut columns = Self::default();
        for (append, sealed) in appends.iter().zip(sealed) {
            let Some(snapshot) = &append.snapshot else {
                continue;
            };
            columns.types.push(append.aggregate_type);
            columns.ids.push(&append.aggregate_id);
            columns.last_sequences.push(snapshot.last_sequence);
            columns.counters.push(snapshot.counter);
            columns.payloads.push(
                sealed
                    .as_ref()
                    .and_then(|s| s.snapshot.as_ref())
                    .unwrap_or(&snapshot.payload),
            );
        }
        columns
    }
}

/// A row of the group's write: an event where it landed, with its facts (none of these when
/// the group has only snapshots), and how many snapshots were written.
#[derive(sqlx::FromRow)]
struct Written {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    sequence: Option<i64>,
    log_position: Option<i64>,
    recorded_at: Option<DateTime<Utc>>,
    owner: Option<String>,
    payload_bytes: Option<i32>,
    written: i64,
}

/// Inserts every event of the group and then writes its snapshots, in one statement (sealed
/// payloads where there are). A snapshot is written unless a newer one exists, which means
/// another writer appended first.
pub(super) async fn write<'a>(
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
    let snapshots = Snapshots::of(appends, sealed);
    // The snapshots read the events' count first, so the events (and the log lock their
    // trigger takes) come first, as in every appending transaction. A new aggregate's owner
    // is the one its first event names (the owners' trigger's rows are not visible here).
    let rows: Vec<Written> = sqlx::query_as(
        "WITH event AS (
            INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                event_version, payload, metadata)
            SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                 $6::jsonb[], $7::jsonb[])
            RETURNING aggregate_type, aggregate_id, sequence, log_position, recorded_at,
                      payload_bytes, CASE WHEN sequence = 1 THEN event_owner(event_type, payload) END AS named),
         snapshot AS (
            INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                   current_snapshot, payload)
            SELECT * FROM UNNEST($8::text[], $9::text[], $10::bigint[], $11::bigint[],
                                 $12::jsonb[])
             WHERE (SELECT count(*) FROM event) >= 0
            ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
               SET last_sequence = EXCLUDED.last_sequence,
                   current_snapshot = EXCLUDED.current_snapshot,
                   payload = EXCLUDED.payload
             WHERE snapshots.last_sequence < EXCLUDED.last_sequence
            RETURNING 1)
         SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.log_position, e.recorded_at,
                coalesce(o.owner, max(e.named) OVER (PARTITION BY e.aggregate_type,
                                                                  e.aggregate_id)) AS owner,
                e.payload_bytes, s.written
           FROM (SELECT count(*) AS written FROM snapshot) s
           LEFT JOIN event e ON true
           LEFT JOIN aggregate_owners o
                  ON o.aggregate_type = e.aggregate_type AND o.aggregate_id = e.aggregate_id",
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
    .bind(&snapshots.types)
    .bind(&snapshots.ids)
    .bind(&snapshots.last_sequences)
    .bind(&snapshots.counters)
    .bind(&snapshots.payloads)
    .fetch_all(conn)
    .await?;
    let written = rows.first().map_or(0, |row| row.written);
    if usize::try_from(written).ok() != Some(snapshots.types.len()) {
        return Err(Failure::StaleSnapshot);
    }
    stored(appends, rows, events().count())
}

/// Where each of the `count` inserted events landed, keyed by its append.
fn stored<'a>(
    appends: &[&'a Append],
    rows: Vec<Written>,
    count: usize,
) -> Result<Stored<'a>, Failure> {
    let keys: HashMap<(&str, &str), &'a Append> = appends
        .iter()
        .map(|a| ((a.aggregate_type, a.aggregate_id.as_str()), *a))
        .collect();
    let stored: Stored<'a> = rows
        .into_iter()
        .filter_map(|row| {
            let (kind, id) = (row.aggregate_type?, row.aggregate_id?);
            let append = *keys.get(&(kind.as_str(), id.as_str()))?;
            let key = (
                append.aggregate_type,
                append.aggregate_id.as_str(),
                row.sequence?,
            );
            let facts = EventFacts {
                owner: row.owner,
                text_bytes: row.payload_bytes,
            };
            let landed = Landed {
                position: row.log_position?,
                at: row.recorded_at?,
                facts,
            };
            Some((key, landed))
        })
        .collect();
    if stored.len() == count {
        Ok(stored)
    } else {
        let lost = "the events INSERT returned fewer rows than it was given";
        Err(Failure::Database(sqlx::Error::Protocol(lost.into())))
    }
}
