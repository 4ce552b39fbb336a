//! Our event repository: postgres-es reads; appends go to the group committer.
//!
//! postgres-es 0.5 commits a snapshot update before checking that it matched, so a writer
//! that loaded a snapshot and then newer events (another writer committed in between) gets
//! its events committed *and* a conflict error; a retry then runs the command twice. Our
//! append checks the snapshot update inside the transaction and rolls back on a mismatch.

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::PgPool;

use super::append::Append;
use super::group_commit::Appender;
use crate::privacy::Vault;

/// postgres-es for loading, our own transaction for appending; personal fields sealed on
/// the way in and opened on the way out.
pub struct ChronicleRepository {
    inner: PostgresEventRepository,
    snapshot_every: usize,
    vault: Vault,
    appender: Appender,
}

impl ChronicleRepository {
    /// A repository over the `events` and `snapshots` tables of `pool`, for an aggregate
    /// snapshotted every `snapshot_every` events (0: never), appending through `appender`.
    pub fn new(pool: PgPool, snapshot_every: usize, vault: Vault, appender: Appender) -> Self {
        Self {
            inner: PostgresEventRepository::new(pool),
            snapshot_every,
            vault,
            appender,
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

/// The store's error for a database failure.
pub(super) fn persistence(error: sqlx::Error) -> PersistenceError {
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

    /// cqrs-es's own commit path; [`super::EventStores::append`] is ours, and both end in
    /// the group committer.
    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let append = Append::serialized::<A>(events, snapshot_update, self.snapshot_every);
        self.appender.append(append).await.map(drop)
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
