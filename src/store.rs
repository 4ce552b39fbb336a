//! Event store wiring: cqrs-es's persisted store over our `events` and `snapshots` tables
//! (postgres-es loads; [`EventStores::append`] writes, through the group committer), with
//! each aggregate's upcasters and its configured snapshot interval.

use std::collections::HashMap;
use std::sync::Arc;

mod append;
mod group_commit;
mod inline;
mod kept;
mod repository;

use chronicle_aggregates::{StreamEvent, Upcast, Upcasters};
use chronicle_projections::EventMetadata;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore, PersistenceError};
use cqrs_es::{AggregateError, EventStore};
use sqlx::PgPool;

use crate::log::CommittedFeed;
use crate::privacy::{holds_personal_data, Vault};
use append::Append;
use group_commit::Appender;
use kept::KeptSnapshots;

pub use append::Appended;
pub use inline::{lock_log, InlineProjectors, LOG_LOCK};
pub use repository::ChronicleRepository;

/// The event store for one aggregate type.
pub type Store<A> = PersistedEventStore<ChronicleRepository, A>;

/// Builds event stores and knows every aggregate's upcasters.
#[derive(Clone)]
pub struct EventStores {
    pool: PgPool,
    vault: Vault,
    snapshot_every: Arc<HashMap<String, usize>>,
    upcasters: Arc<Upcasters>,
    appender: Appender,
    kept: KeptSnapshots,
}

/// Whether states of `aggregate_type` may be kept in memory: not those holding personal data
/// (their open state stays in memory no longer than a command).
fn keeps(aggregate_type: &str) -> bool {
    !holds_personal_data(aggregate_type)
}

impl EventStores {
    /// Stores over `pool`, snapshotting the listed aggregate types every N events, sealing
    /// personal data with `vault`, applying `inline` projectors in each append and handing
    /// what commits to `committed`. Starts the group committer, so it must be called within
    /// the runtime.
    pub fn new(
        pool: PgPool,
        snapshots: &[(String, usize)],
        upcasters: Upcasters,
        vault: Vault,
        inline: InlineProjectors,
        committed: CommittedFeed,
    ) -> Self {
        Self {
            appender: Appender::start(pool.clone(), vault.clone(), inline, committed),
            pool,
            vault,
            snapshot_every: Arc::new(snapshots.iter().cloned().collect()),
            upcasters: Arc::new(upcasters),
            kept: KeptSnapshots::default(),
        }
    }

    /// Appends `events` with `metadata` (and the snapshot that falls due) in the next group
    /// commit, together with the streams they start and the events of other streams in
    /// `others`; `decided` is the loaded context whose aggregate decided them (and so applied
    /// them).
    ///
    /// # Errors
    /// `OptimisticLockError` when another writer appended to the aggregate, or to one of the
    /// other streams, first; the database's failure otherwise.
    pub async fn append<A: Upcast>(
        &self,
        decided: EventStoreAggregateContext<A>,
        events: &[A::Event],
        others: Vec<StreamEvent>,
        metadata: &EventMetadata,
    ) -> Result<Appended, PersistenceError> {
        let aggregate_id = decided.aggregate_id.clone();
        let every = self.snapshot_every::<A>();
        let append = Append::new(decided, events, others, metadata, every)?;
        let after = append.state_after().filter(|_| keeps(A::TYPE));
        let appended = self.appender.append(append).await;
        match (&appended, after) {
            (Ok(_), Some(state)) => self.kept.keep(A::TYPE, &aggregate_id, state),
            _ => self.kept.forget(A::TYPE, &aggregate_id),
        }
        appended
    }

    /// Forgets aggregate `aggregate_id`'s kept state.
    pub fn forget_kept<A: Upcast>(&self, aggregate_id: &str) {
        self.kept.forget(A::TYPE, aggregate_id);
    }

    /// Aggregate `aggregate_id` of type `A` as stored (its snapshot and events), never a
    /// kept state: for reads that decide no command (another instance may have moved it on).
    ///
    /// # Errors
    /// The store failed.
    pub async fn load_stored<A: Upcast>(
        &self,
        aggregate_id: &str,
    ) -> Result<EventStoreAggregateContext<A>, AggregateError<A::Error>> {
        self.store::<A>().load_aggregate(aggregate_id).await
    }

    /// Aggregate `aggregate_id` of type `A`: its kept state when this instance wrote its last
    /// event (see `store::kept`), otherwise loaded from its snapshot and events; and whether
    /// it is the kept state.
    ///
    /// # Errors
    /// The store failed.
    pub async fn load<A: Upcast>(
        &self,
        aggregate_id: &str,
    ) -> Result<(EventStoreAggregateContext<A>, bool), AggregateError<A::Error>> {
        let kept = self.kept.get(A::TYPE, aggregate_id).and_then(|state| {
            Some(EventStoreAggregateContext {
                aggregate_id: aggregate_id.to_owned(),
                aggregate: serde_json::from_value::<A>(state.payload).ok()?,
                current_sequence: usize::try_from(state.last_sequence).ok()?,
                current_snapshot: usize::try_from(state.counter).ok(),
            })
        });
        match kept {
            Some(context) => Ok((context, true)),
            None => Ok((self.load_stored(aggregate_id).await?, false)),
        }
    }

    /// Appends `events` of other streams, decided without loading an aggregate (e.g. many
    /// requests' moves), in the next group commit, all or none.
    ///
    /// # Errors
    /// `OptimisticLockError` when another writer appended to one of the streams first; the
    /// database's failure otherwise.
    pub async fn append_others(
        &self,
        events: Vec<StreamEvent>,
        metadata: &EventMetadata,
    ) -> Result<(), PersistenceError> {
        if let Some(append) = Append::others(events, metadata) {
            self.appender.append(append).await?;
        }
        Ok(())
    }

    fn snapshot_every<A: Upcast>(&self) -> usize {
        self.snapshot_every.get(A::TYPE).copied().unwrap_or(0)
    }

    /// The store for `A`: snapshotting if configured, upcasting on every load.
    pub fn store<A: Upcast>(&self) -> Store<A> {
        let every = self.snapshot_every::<A>();
        let repository = ChronicleRepository::new(
            self.pool.clone(),
            every,
            self.vault.clone(),
            self.appender.clone(),
        );
        let store = match every {
            0 => PersistedEventStore::new_event_store(repository),
            every => PersistedEventStore::new_snapshot_store(repository, every),
        };
        store.with_upcasters(A::upcasters())
    }

    /// Every registered aggregate's upcasters, for the global log reader.
    pub fn upcasters(&self) -> Arc<Upcasters> {
        Arc::clone(&self.upcasters)
    }

    /// The vault that seals and opens personal data.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The pool the stores write through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
