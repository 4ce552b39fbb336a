//! Tamper evidence: recomputes each aggregate's hash chain (see migration
//! `20261123000006_hash_chain.sql`) and reports the first broken link in log order; writes
//! and checks signed checkpoints of the whole log (`20261123000008_audit_checkpoints.sql`).

use chronicle_projections::LogCursor;
use futures::TryStreamExt;
use hmac::{Hmac, Mac};
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

/// A checkpoint that no longer matches the log, or whose signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointBreak {
    /// The checkpoint's id.
    pub id: i64,
    /// What is wrong.
    pub reason: String,
}

/// The digest over the events after `after` through `through`, chained to `previous`, and
/// how many events it covers.
async fn digest(
    pool: &PgPool,
    previous: &[u8],
    after: LogCursor,
    through: LogCursor,
) -> Result<(Vec<u8>, i64), sqlx::Error> {
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT position, hash FROM events
          WHERE log_position > $1 AND log_position <= $2
          ORDER BY log_position",
    )
    .bind(after.position)
    .bind(through.position)
    .fetch(pool);
    let mut hasher = Sha256::new().chain_update(previous);
    let mut events = 0;
    while let Some((position, hash)) = rows.try_next().await? {
        hasher.update(position.to_be_bytes());
        hasher.update(&hash);
        events += 1;
    }
    Ok((hasher.finalize().to_vec(), events))
}

/// The signature of a checkpoint through `through`, the cursor text it was signed with.
fn sign(key: &[u8], digest: &[u8], through: &str) -> Option<Vec<u8>> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(digest);
    mac.update(through.as_bytes());
    Some(mac.finalize().into_bytes().to_vec())
}

/// A recorded checkpoint.
#[derive(sqlx::FromRow)]
struct CheckpointRow {
    id: i64,
    after_log_position: i64,
    through_log_position: i64,
    /// The cursor text of a checkpoint recorded before log positions followed commit order
    /// (`c1.<transaction id>.<position>`): what its signature covers.
    legacy_through: Option<String>,
    events: i64,
    digest: Vec<u8>,
    signature: Option<Vec<u8>>,
}

impl CheckpointRow {
    fn after(&self) -> LogCursor {
        LogCursor::at(self.after_log_position)
    }

    fn through(&self) -> LogCursor {
        LogCursor::at(self.through_log_position)
    }

    fn signed_text(&self) -> String {
        self.legacy_through
            .clone()
            .unwrap_or_else(|| self.through().to_string())
    }
}

async fn checkpoints(pool: &PgPool) -> Result<Vec<CheckpointRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, after_log_position, through_log_position,
                'c1.' || through_transaction_id || '.' || through_position AS legacy_through,
                events, digest, signature
           FROM audit_checkpoints ORDER BY id",
    )
    .fetch_all(pool)
    .await
}

/// Records a checkpoint over every committed event since the last one, signed with `key` when
/// given; returns how many events it covers (none: no checkpoint is written).
///
/// # Errors
/// Any database error.
pub async fn checkpoint(pool: &PgPool, key: Option<&[u8]>) -> Result<i64, sqlx::Error> {
    let last = checkpoints(pool).await?.pop();
    let (after, previous) = last.map_or((LogCursor::START, Vec::new()), |row| {
        (row.through(), row.digest)
    });
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(log_position), 0) FROM events")
        .fetch_one(pool)
        .await?;
    let through = LogCursor::at(head);
    if through <= after {
        return Ok(0);
    }
    let (digest, events) = digest(pool, &previous, after, through).await?;
    let signature = key.and_then(|key| sign(key, &digest, &through.to_string()));
    sqlx::query(
        "INSERT INTO audit_checkpoints (after_log_position, through_log_position, events,
                                        digest, signature)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(after.position)
    .bind(through.position)
    .bind(events)
    .bind(digest)
    .bind(signature)
    .execute(pool)
    .await?;
    Ok(events)
}

/// Recomputes every checkpoint from the log (and checks its signature when `key` is given);
/// returns how many were checked and the first that fails.
///
/// # Errors
/// Any database error.
pub async fn verify_checkpoints(
    pool: &PgPool,
    key: Option<&[u8]>,
) -> Result<(u64, Option<CheckpointBreak>), sqlx::Error> {
    let mut previous = Vec::new();
    let mut checked = 0;
    for row in checkpoints(pool).await? {
        checked += 1;
        let (digest, counted) = digest(pool, &previous, row.after(), row.through()).await?;
        let reason = if counted != row.events || digest != row.digest {
            Some("the events it covers changed since it was recorded".to_owned())
        } else if let Some(key) = key {
            let expected = sign(key, &digest, &row.signed_text());
            (row.signature.is_none() || expected != row.signature)
                .then(|| "its signature does not verify".to_owned())
        } else {
            None
        };
        if let Some(reason) = reason {
            return Ok((checked, Some(CheckpointBreak { id: row.id, reason })));
        }
        previous = row.digest;
    }
    Ok((checked, None))
}

/// Records a checkpoint periodically, on one instance at a time.
pub struct Checkpointer {
    pool: PgPool,
    every: std::time::Duration,
    key: Option<Vec<u8>>,
}

impl Checkpointer {
    /// A checkpointer recording every `every`, signing with `key` when given.
    pub fn new(pool: PgPool, every: std::time::Duration, key: Option<Vec<u8>>) -> Self {
        if key.is_none() {
            tracing::warn!("no audit signing key: checkpoints are recorded unsigned");
        }
        Self { pool, every, key }
    }

    /// The role that lets an instance record checkpoints.
    pub const ROLE: &'static str = "audit_checkpoint";

    /// Runs until `shutdown`, recording while this instance holds `role`.
    pub async fn run(
        self,
        role: crate::projection::Role,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = tokio::time::sleep(self.every) => {}
                () = shutdown.cancelled() => return,
            }
            // Held while recording: the role is handed on only after it.
            let Some(_lease) = role.lease(uuid::Uuid::nil()) else {
                continue;
            };
            if let Err(error) = checkpoint(&self.pool, self.key.as_deref()).await {
                tracing::warn!(%error, "recording an audit checkpoint failed");
            }
        }
    }
}
