//! Our event repository: postgres-es reads, and an append that is all-or-nothing.
//!
//! postgres-es 0.5 commits a snapshot update before checking that it matched, so a writer
//! that loaded a snapshot and then newer events (another writer committed in between) gets
//! its events committed *and* a conflict error; a retry then runs the command twice. This
//! append checks the snapshot update inside the transaction and rolls back on a mismatch.
//! It also inserts a command's events in one statement instead of one round trip each.

use chronicle_projections::{EventMetadata, LogCursor, ProjectionError, RecordedEvent};
use chrono::{DateTime, Utc};
use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::inline::InlineProjectors;
use crate::privacy::{holds_personal_data, Vault};

/// postgres-es for loading, our own transaction for appending; personal fields sealed on
/// the way in and opened on the way out.
pub struct ChronicleRepository {
    inner: PostgresEventRepository,
    pool: PgPool,
    snapshot_every: usize,
    vault: Vault,
    inline: InlineProjectors,
}

impl ChronicleRepository {
    /// A repository over the `events` and `snapshots` tables of `pool`, for an aggregate
    /// snapshotted every `snapshot_every` events (0: never), applying `inline` projectors in
    /// each append's transaction.
    pub fn new(
        pool: PgPool,
        snapshot_every: usize,
        vault: Vault,
        inline: InlineProjectors,
    ) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool.clone()),
            pool,
            snapshot_every,
            vault,
            inline,
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
        let mut snapshot_update = snapshot_update;
        let sealed = self
            .sealed_payloads::<A>(&mut tx, events, snapshot_update.as_mut())
            .await?;
        if !events.is_empty() {
            let stored = insert_events::<A>(&mut tx, events, sealed.as_deref()).await?;
            if self.inline.want(A::TYPE) {
                let recorded = recorded(events, stored);
                self.inline
                    .apply(&mut tx, &recorded)
                    .await
                    .map_err(|error| match error {
                        // A lost database is still one (the caller is told UNAVAILABLE).
                        ProjectionError::Database(error) => persistence(error),
                        malformed @ ProjectionError::Malformed { .. } => {
                            PersistenceError::UnknownError(Box::new(malformed))
                        }
                    })?;
            }
        }
        if let Some(update) = snapshot_update {
            let last = events.last().map_or(0, |e| e.sequence);
            if !self.write_snapshot::<A>(&mut tx, update, last).await? {
                // A newer snapshot exists: another writer got there first (the event keys
                // usually say so earlier). Nothing of ours stays.
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

impl ChronicleRepository {
    /// The events' payloads with personal fields sealed (and the snapshot's, in place), for
    /// streams that hold personal data; `None` for the others, whose payloads are stored as
    /// they are (a bulk batch append carries megabytes: it is not copied).
    async fn sealed_payloads<A: Aggregate>(
        &self,
        tx: &mut PgConnection,
        events: &[SerializedEvent],
        snapshot_update: Option<&mut (String, Value, usize)>,
    ) -> Result<Option<Vec<Value>>, PersistenceError> {
        if !holds_personal_data(A::TYPE) {
            return Ok(None);
        }
        let mut payloads: Vec<(String, Value)> = events
            .iter()
            .map(|e| (e.event_type.clone(), e.payload.clone()))
            .collect();
        let aggregate_id = events
            .first()
            .map(|e| e.aggregate_id.clone())
            .or(snapshot_update.as_ref().map(|(id, ..)| id.clone()));
        if let Some(aggregate_id) = aggregate_id {
            self.vault
                .seal(
                    tx,
                    (A::TYPE, &aggregate_id),
                    &mut payloads,
                    snapshot_update.map(|(_, payload, _)| payload),
                )
                .await
                .map_err(persistence)?;
        }
        Ok(Some(
            payloads.into_iter().map(|(_, payload)| payload).collect(),
        ))
    }

    /// Writes the snapshot unless a newer one exists; false when one does.
    async fn write_snapshot<A: Aggregate>(
        &self,
        tx: &mut PgConnection,
        (aggregate_id, payload, current_snapshot): (String, Value, usize),
        last_event: usize,
    ) -> Result<bool, PersistenceError> {
        // cqrs-es snapshots the state after the last multiple of the interval, which is not
        // the last event when one command appends several. Comparing sequences rather than
        // snapshot counters keeps a stale, unreadable snapshot replaceable.
        let every = self.snapshot_every.max(1);
        let last_sequence = to_i64(last_event / every * every);
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
        .execute(tx)
        .await
        .map_err(persistence)?;
        Ok(written.rows_affected() == 1)
    }
}

/// Where each appended event landed: (sequence, log position, recorded at).
type Stored = Vec<(i64, i64, DateTime<Utc>)>;

/// Inserts one aggregate's events in one statement (payloads as given, else as serialized).
async fn insert_events<A: Aggregate>(
    tx: &mut PgConnection,
    events: &[SerializedEvent],
    payloads: Option<&[Value]>,
) -> Result<Stored, PersistenceError> {
    let column =
        |field: fn(&SerializedEvent) -> &str| -> Vec<&str> { events.iter().map(field).collect() };
    let payloads: Vec<&Value> = match payloads {
        Some(sealed) => sealed.iter().collect(),
        None => events.iter().map(|e| &e.payload).collect(),
    };
    sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         SELECT $1, * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::jsonb[])
         RETURNING sequence, log_position, recorded_at",
    )
    .bind(A::TYPE)
    .bind(column(|e| e.aggregate_id.as_str()))
    .bind(
        events
            .iter()
            .map(|e| to_i64(e.sequence))
            .collect::<Vec<_>>(),
    )
    .bind(column(|e| e.event_type.as_str()))
    .bind(column(|e| e.event_version.as_str()))
    .bind(payloads)
    .bind(events.iter().map(|e| &e.metadata).collect::<Vec<_>>())
    .fetch_all(tx)
    .await
    .map_err(persistence)
}

/// The appended events as the log shows them (personal fields open: as the command wrote
/// them), in sequence order.
fn recorded(events: &[SerializedEvent], mut stored: Stored) -> Vec<RecordedEvent> {
    stored.sort_unstable();
    events
        .iter()
        .zip(stored)
        .map(|(event, (sequence, position, recorded_at))| RecordedEvent {
            cursor: LogCursor::at(position),
            metadata: EventMetadata::from_value(&event.metadata),
            sequence,
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            event_type: event.event_type.clone(),
            event_version: event.event_version.clone(),
            payload: event.payload.clone(),
            recorded_at,
        })
        .collect()
}
