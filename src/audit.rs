//! Tamper evidence: recomputes each aggregate's hash chain (see migration
//! `20261123000006_hash_chain.sql`) and reports the first broken link in log order.

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::PgPool;

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    /// The event's global position.
    pub position: i64,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its sequence in the aggregate.
    pub sequence: i64,
    /// What is wrong: its content or hash was changed, or an event before it is missing.
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// Events whose hash was recomputed.
    pub events_checked: u64,
    /// Aggregates whose chain is broken.
    pub broken_aggregates: u64,
    /// The broken link earliest in the log, if any.
    pub first_break: Option<ChainBreak>,
}

/// One aggregate's walk along its chain.
struct Walk {
    key: (String, String),
    sequence: i64,
    previous: Vec<u8>,
    broken: bool,
}

/// Recomputes the chains of every aggregate, or of one (`type`, `id`).
///
/// # Errors
/// Any database error.
pub async fn verify(
    pool: &PgPool,
    aggregate: Option<(&str, &str)>,
) -> Result<Verification, sqlx::Error> {
    let mut rows = sqlx::query_as::<_, (String, String, i64, i64, Vec<u8>, Vec<u8>)>(
        "SELECT aggregate_type, aggregate_id, sequence, position, hash, event_content(e)
           FROM events e
          WHERE ($1::text IS NULL OR (aggregate_type = $1 AND aggregate_id = $2))
          ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .bind(aggregate.map(|(kind, _)| kind))
    .bind(aggregate.map(|(_, id)| id))
    .fetch(pool);
    let mut found = Verification {
        events_checked: 0,
        broken_aggregates: 0,
        first_break: None,
    };
    let mut walk: Option<Walk> = None;
    while let Some((kind, id, sequence, position, stored, content)) = rows.try_next().await? {
        found.events_checked += 1;
        let key = (kind, id);
        let current = match walk.as_mut() {
            Some(current) if current.key == key => current,
            _ => walk.insert(Walk {
                key,
                sequence: 0,
                previous: Vec::new(),
                broken: false,
            }),
        };
        if current.broken {
            continue;
        }
        let reason = if sequence != current.sequence + 1 {
            Some(format!(
                "event {} of this aggregate is missing",
                current.sequence + 1
            ))
        } else {
            let expected = Sha256::new()
                .chain_update(&current.previous)
                .chain_update(&content)
                .finalize();
            (expected.as_slice() != stored.as_slice())
                .then(|| "its content or hash does not match the chain".to_owned())
        };
        if let Some(reason) = reason {
            current.broken = true;
            found.broken_aggregates += 1;
            if found
                .first_break
                .as_ref()
                .is_none_or(|b| position < b.position)
            {
                found.first_break = Some(ChainBreak {
                    position,
                    aggregate_type: current.key.0.clone(),
                    aggregate_id: current.key.1.clone(),
                    sequence,
                    reason,
                });
            }
        }
        current.sequence = sequence;
        current.previous = stored;
    }
    Ok(found)
}
