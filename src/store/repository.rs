//! Our event repository: postgres-es reads, and an append that is all-or-nothing.
//!
//! postgres-es 0.5 commits a snapshot update before checking that it matched, so a writer
//! that loaded a snapshot and then newer events (another writer committed in between) gets
//! its events committed *and* a conflict error; a retry then runs the command twice. This
//! append checks the snapshot update inside the transaction and rolls back on a mismatch.
//! It also inserts a command's events in one statement instead of one round trip each.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

use crate::privacy::{holds_personal_data, Vault};

/// postgres-es for loading, our own transaction for appending; personal fields sealed on
/// the way in and opened on the way out.
pub struct ChronicleRepository {
    inner: PostgresEventRepository,
    pool: PgPool,
    snapshot_every: usize,
    vault: Vault,
}

impl ChronicleRepository {
    /// A repository over the `events` and `snapshots` tables of `pool`, for an aggregate
    /// snapshotted every `snapshot_every` events (0: never).
    pub fn new(pool: PgPool, snapshot_every: usize, vault: Vault) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            pool,
            snapshot_every,
            vault,
        }
    }

    async fn opened<A: Aggregate>(
        &self,
        mut events: Vec<SerializedEvent>,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.vault
            .open(events.iter_mut().map(|e| (A::TYPE, &mut e.payload)))
            .await
            .map_err(persistence)?;
        Ok(events)
    }
}

/// Unique violations of the stream keys mean a concurrent writer; any other is a bug.
const STREAM_KEYS: [&str; 2] = ["events_pkey", "snapshots_pkey"];

fn persistence(error: sqlx::Error) -> PersistenceError {
    let concurrent = error
        .as_database_error()
        .and_then(|db| db.constraint())
        .is_some_and(|constraint| STREAM_KEYS.contains(&constraint));
    if concurrent {
        PersistenceError::OptimisticLockError
    } else if crate::command::is_unavailable(&error) {
        PersistenceError::ConnectionError(Box::new(error))
    } else {
        PersistenceError::UnknownError(Box::new(error))
    }
}

fn to_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PersistedEventRepository for ChronicleRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self.inner.get_events::<A>(aggregate_id).await?;
        self.opened::<A>(events).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let events = self
            .inner
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await?;
        self.opened::<A>(events).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        let mut snapshot = self.inner.get_snapshot::<A>(aggregate_id).await?;
        if let Some(snapshot) = &mut snapshot {
            self.vault
                .open([(A::TYPE, &mut snapshot.aggregate)])
                .await
                .map_err(persistence)?;
        }
        Ok(snapshot)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let mut tx = self.pool.begin().await.map_err(persistence)?;
        // Only streams that hold personal data are copied to be sealed: a bulk batch append
        // carries megabytes.
        let personal = holds_personal_data(A::TYPE);
        let mut payloads: Vec<(String, Value)> = if personal {
            events
                .iter()
                .map(|e| (e.event_type.clone(), e.payload.clone()))
                .collect()
        } else {
            Vec::new()
        };
        let mut snapshot_update = snapshot_update;
        let sealed_id = events
            .first()
            .map(|e| e.aggregate_id.as_str())
            .or(snapshot_update.as_ref().map(|(id, ..)| id.as_str()))
            .filter(|_| personal);
        if let Some(aggregate_id) = sealed_id {
            let aggregate_id = aggregate_id.to_owned();
            self.vault
                .seal(
                    &mut tx,
                    (A::TYPE, &aggregate_id),
                    &mut payloads,
                    snapshot_update.as_mut().map(|(_, payload, _)| payload),
                )
                .await
                .map_err(persistence)?;
        }
        if !events.is_empty() {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[],
                                          $6::jsonb[], $7::jsonb[])",
            )
            .bind(A::TYPE)
            .bind(
                events
                    .iter()
                    .map(|e| e.aggregate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| to_i64(e.sequence))
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| e.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                events
                    .iter()
                    .map(|e| e.event_version.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(if personal {
                payloads
                    .iter()
                    .map(|(_, payload)| payload)
                    .collect::<Vec<_>>()
            } else {
                events.iter().map(|e| &e.payload).collect()
            })
            .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await
            .map_err(persistence)?;
        }
        if let Some((aggregate_id, payload, current_snapshot)) = snapshot_update {
            // cqrs-es snapshots the state after the last multiple of the interval, which is
            // not the last event when one command appends several.
            let last = events.last().map_or(0, |e| e.sequence);
            let every = self.snapshot_every.max(1);
            let last_sequence = to_i64(last / every * every);
            let written = sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                        current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                    SET last_sequence = EXCLUDED.last_sequence,
                        current_snapshot = EXCLUDED.current_snapshot,
                        payload = EXCLUDED.payload
                  WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(last_sequence)
            .bind(to_i64(current_snapshot))
            .bind(&payload)
            .execute(&mut *tx)
            .await
            .map_err(persistence)?;
            if written.rows_affected() != 1 {
                // A newer snapshot exists: another writer got there first (the event keys
                // usually say so earlier). Nothing of ours stays. Comparing sequences rather
                // than snapshot counters keeps a stale, unreadable snapshot replaceable.
                tx.rollback().await.map_err(persistence)?;
                return Err(PersistenceError::OptimisticLockError);
            }
        }
        tx.commit().await.map_err(persistence)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.inner.stream_all_events::<A>().await
    }
}
