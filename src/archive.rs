//! Archiving the log: export as NDJSON (one stored event per line, in log order, with its
//! hash) and import into an empty store, where the database recomputes every hash and the
//! import stops at the first that differs.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use chronicle_projections::LogCursor;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;

/// Events read or written per round trip.
const CHUNK: i64 = 1000;

/// One exported event: exactly as stored (before upcasting), so its hash still verifies.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArchivedEvent {
    /// Its log position in the source (informational; an import gets new positions).
    pub position: i64,
    /// The writing transaction in the source log (informational).
    pub transaction_id: i64,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// Its type.
    pub event_type: String,
    /// Its stored version.
    pub event_version: String,
    /// Its stored payload.
    pub payload: Value,
    /// Its metadata.
    pub metadata: Value,
    /// When it was appended.
    pub recorded_at: DateTime<Utc>,
    /// Its hash-chain link, lowercase hex.
    pub hash: String,
}

/// How many committed events [`export`] would write.
///
/// # Errors
/// A database failure.
pub async fn count(
    pool: &PgPool,
    after: LogCursor,
    types: Option<&[String]>,
) -> anyhow::Result<u64> {
    let count: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE log_position > $1 AND ($2::text[] IS NULL OR aggregate_type = ANY($2))",
    )
    .bind(after.position)
    .bind(types)
    .fetch_one(pool)
    .await?;
    Ok(count.unsigned_abs())
}

/// Writes the committed events after `after` (of `types`, if given) to `out`, one JSON object
/// per line, telling `progress` how many so far after each chunk; returns how many.
///
/// # Errors
/// A database or write failure.
pub async fn export(
    pool: &PgPool,
    after: LogCursor,
    types: Option<&[String]>,
    out: &mut impl Write,
    progress: &dyn Fn(u64),
) -> anyhow::Result<u64> {
    let mut cursor = after;
    let mut written = 0;
    loop {
        let chunk: Vec<ArchivedEvent> = sqlx::query_as(
            "SELECT log_position AS position, transaction_id::text::bigint AS transaction_id,
                    aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                    metadata, recorded_at, encode(hash, 'hex') AS hash
               FROM events
              WHERE log_position > $1
                AND ($2::text[] IS NULL OR aggregate_type = ANY($2))
              ORDER BY log_position LIMIT $3",
        )
        .bind(cursor.position)
        .bind(types)
        .bind(CHUNK)
        .fetch_all(pool)
        .await?;
        let Some(last) = chunk.last() else {
            return Ok(written);
        };
        cursor = LogCursor::at(last.position);
        for event in &chunk {
            serde_json::to_writer(&mut *out, event)?;
            out.write_all(b"\n")?;
        }
        written += chunk.len() as u64;
        progress(written);
    }
}

/// Reads an export and appends its events to `pool`'s empty store in one transaction,
/// telling `progress` how many so far every thousand events; returns how many. Nothing is
/// written if any line is malformed or any recomputed hash differs from the exported one.
///
/// # Errors
/// The store is not empty, a line is not an exported event, a hash differs, or the
/// database failed.
pub async fn import(
    pool: &PgPool,
    input: impl BufRead,
    progress: &dyn Fn(u64),
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let empty: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM events)")
        .fetch_one(&mut *tx)
        .await?;
    if !empty {
        bail!("the event store is not empty: import only into a fresh database");
    }
    let mut imported = 0;
    for (index, line) in input.lines().enumerate() {
        let line = line.context("reading the export")?;
        if line.trim().is_empty() {
            continue;
        }
        let event: ArchivedEvent = serde_json::from_str(&line)
            .with_context(|| format!("line {} is not an exported event", index + 1))?;
        let hash: String = sqlx::query_scalar(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING encode(hash, 'hex')",
        )
        .bind(&event.aggregate_type)
        .bind(&event.aggregate_id)
        .bind(event.sequence)
        .bind(&event.event_type)
        .bind(&event.event_version)
        .bind(&event.payload)
        .bind(&event.metadata)
        .bind(event.recorded_at)
        .fetch_one(&mut *tx)
        .await
        .with_context(|| format!("appending line {}", index + 1))?;
        if hash != event.hash {
            bail!(
                "line {}: {} {} event {} does not verify: its content or an earlier event \
                 was changed; nothing was imported",
                index + 1,
                event.aggregate_type,
                event.aggregate_id,
                event.sequence
            );
        }
        imported += 1;
        if imported % CHUNK.unsigned_abs() == 0 {
            progress(imported);
        }
    }
    tx.commit().await?;
    progress(imported);
    Ok(imported)
}
