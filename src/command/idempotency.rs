//! Idempotent commands: the first outcome for an (actor, key) is stored and returned to every
//! repeat, including repeats that race the first.
//!
//! Racing copies serialize on a session-level advisory lock of the key. The lock is taken
//! with `pg_try_advisory_lock` in a loop, so waiters hold no pooled connection (a blocking
//! wait could starve the pool the winner needs). No transaction stays open meanwhile, which
//! would hold back the global log reader. Should the process die between appending events
//! and storing the outcome, the events still carry the key's derived command id, and the next
//! attempt rebuilds the outcome from them instead of running the command again.

use std::future::Future;
use std::time::Duration;

use chronicle_aggregates::ErrorCode;
use chronicle_projections::LogCursor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::{CommandError, CommandReceipt};

const MAX_KEY_LENGTH: usize = 200;
const LOCK_DEADLINE: Duration = Duration::from_secs(30);
/// Namespace of command ids derived from idempotency keys.
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6368_726f_6e69_636c_6500_0000_0000_0001);

/// A client's idempotency key with a fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    key: String,
    fingerprint: String,
}

impl IdempotencyKey {
    /// Pairs `key` with a hash of `request` (the client's input, not the command, which carries
    /// server-side times and ids that differ on every retry).
    ///
    /// # Errors
    /// The key is empty or longer than 200 characters.
    pub fn new(key: String, request: &impl Serialize) -> Result<Self, CommandError> {
        if key.is_empty() || key.chars().count() > MAX_KEY_LENGTH || key.contains('\0') {
            return Err(CommandError::InvalidIdempotencyKey);
        }
        let body =
            serde_json::to_vec(request).map_err(|e| CommandError::Internal(e.to_string()))?;
        Ok(Self {
            key,
            fingerprint: hex::encode(Sha256::digest(body)),
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Outcome<T> {
    Ok(T),
    Rejected { code: String, message: String },
}

impl<T: Clone> Outcome<T> {
    fn of(result: &Result<T, CommandError>) -> Option<Self> {
        match result {
            Ok(value) => Some(Self::Ok(value.clone())),
            // A rejection by a rule is an outcome; a failure reported under a rejection code
            // (a lookup that could not reach the database) is not.
            Err(CommandError::Rejected { code, message })
                if !matches!(code, ErrorCode::Internal | ErrorCode::Unavailable) =>
            {
                Some(Self::Rejected {
                    code: code.as_str().to_owned(),
                    message: message.clone(),
                })
            }
            // Transient failures are not outcomes: a retry should try again.
            Err(_) => None,
        }
    }

    fn replay(self) -> Result<T, CommandError> {
        match self {
            Self::Ok(value) => Ok(value),
            Self::Rejected { code, message } => Err(CommandError::Rejected {
                code: ErrorCode::parse(&code).unwrap_or(ErrorCode::Internal),
                message,
            }),
        }
    }
}

/// Runs `run` at most once per (actor, key); `run` receives the command id to stamp. Before
/// running, `recover` may rebuild the outcome of a run whose outcome was never stored.
pub(super) async fn execute_once<T, F, Fut, R, RFut>(
    (pool, locks): (&PgPool, &PgPool),
    actor: &str,
    key: &IdempotencyKey,
    recover: R,
    run: F,
) -> Result<T, CommandError>
where
    T: Serialize + DeserializeOwned + Clone,
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T, CommandError>>,
    R: FnOnce(String) -> RFut,
    RFut: Future<Output = Result<Option<T>, CommandError>>,
{
    let scoped = format!("{actor}\n{}", key.key);
    let command_id = Uuid::new_v5(&COMMAND_ID_NAMESPACE, scoped.as_bytes()).to_string();
    let mut lock = KeyLock::acquire(locks, &scoped).await?;
    let result = async {
        if let Some((fingerprint, outcome)) = stored(pool, actor, &key.key).await? {
            if fingerprint != key.fingerprint {
                return Err(CommandError::IdempotencyKeyReused(key.key.clone()));
            }
            return outcome.replay();
        }
        let result = match recover(command_id.clone()).await? {
            Some(value) => Ok(value),
            None => run(command_id).await,
        };
        if let Some(outcome) = Outcome::of(&result) {
            store(pool, actor, key, &outcome).await?;
        }
        result
    }
    .await;
    lock.release().await;
    result
}

async fn stored<T: DeserializeOwned>(
    pool: &PgPool,
    actor: &str,
    key: &str,
) -> Result<Option<(String, Outcome<T>)>, CommandError> {
    let row: Option<(String, serde_json::Value)> = sqlx::query_as(
        "SELECT fingerprint, outcome FROM idempotency_keys WHERE actor = $1 AND key = $2",
    )
    .bind(actor)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    row.map(|(fingerprint, outcome)| {
        serde_json::from_value(outcome)
            .map(|outcome| (fingerprint, outcome))
            .map_err(|error| CommandError::Internal(format!("stored outcome unreadable: {error}")))
    })
    .transpose()
}

async fn store<T: Serialize>(
    pool: &PgPool,
    actor: &str,
    key: &IdempotencyKey,
    outcome: &Outcome<T>,
) -> Result<(), CommandError> {
    sqlx::query(
        "INSERT INTO idempotency_keys (actor, key, fingerprint, outcome) VALUES ($1, $2, $3, $4)",
    )
    .bind(actor)
    .bind(&key.key)
    .bind(&key.fingerprint)
    .bind(sqlx::types::Json(outcome))
    .execute(pool)
    .await?;
    Ok(())
}

/// The outcome of a command whose events were appended but whose outcome was never stored.
pub(super) async fn recovered(
    pool: &PgPool,
    command_id: &str,
) -> Result<Option<CommandReceipt>, CommandError> {
    let row: Option<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, sequence, log_position, count(*) OVER ()
           FROM events WHERE metadata ->> 'command_id' = $1
          ORDER BY sequence DESC LIMIT 1",
    )
    .bind(command_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(
        |(aggregate_type, aggregate_id, version, position, events)| CommandReceipt {
            aggregate_type,
            aggregate_id,
            version,
            events: usize::try_from(events).unwrap_or_default(),
            cursor: Some(LogCursor::at(position)),
        },
    ))
}

/// A session-level advisory lock held on one pooled connection.
struct KeyLock {
    conn: Option<PoolConnection<Postgres>>,
    key: String,
}

impl KeyLock {
    async fn acquire(pool: &PgPool, key: &str) -> Result<Self, CommandError> {
        let deadline = tokio::time::Instant::now() + LOCK_DEADLINE;
        let mut pause = Duration::from_millis(2);
        loop {
            // The connection sits in the lock before the lock is asked for: if this future is
            // dropped mid-query, Drop closes the session instead of pooling a locked one.
            let mut lock = Self {
                conn: Some(pool.acquire().await?),
                key: key.to_owned(),
            };
            if lock.try_lock().await? {
                return Ok(lock);
            }
            lock.release().await;
            if tokio::time::Instant::now() >= deadline {
                return Err(CommandError::Conflict);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    async fn try_lock(&mut self) -> Result<bool, sqlx::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(false);
        };
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&self.key)
            .fetch_one(&mut **conn)
            .await
    }

    /// Unlocks and returns the connection to the pool; on any failure (or cancellation)
    /// the connection stays here and Drop closes it.
    async fn release(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
            .bind(&self.key)
            .execute(&mut **conn)
            .await;
        if unlocked.is_ok() {
            drop(self.conn.take());
        }
    }
}

impl Drop for KeyLock {
    /// A cancelled command (its client went away) must not return a locked connection to the
    /// pool: detach and close it, which ends the session and its lock.
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}
