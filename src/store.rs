//! Event store wiring: cqrs-es's persisted store over our `events` and `snapshots` tables
//! (postgres-es loads, [`ChronicleRepository`] appends), with each aggregate's upcasters and
//! its configured snapshot interval.

use std::collections::HashMap;
use std::sync::Arc;

mod inline;
mod repository;

use chronicle_aggregates::{Upcast, Upcasters};
use cqrs_es::persist::PersistedEventStore;
use sqlx::PgPool;

use crate::privacy::Vault;

pub use inline::{InlineProjectors, LOG_LOCK};
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
    inline: InlineProjectors,
}

impl EventStores {
    /// Stores over `pool`, snapshotting the listed aggregate types every N events, sealing
    /// personal data with `vault`, applying `inline` projectors in each append.
    pub fn new(
        pool: PgPool,
        snapshots: &[(String, usize)],
        upcasters: Upcasters,
        vault: Vault,
        inline: InlineProjectors,
    ) -> Self {
        Self {
            pool,
            vault,
            snapshot_every: Arc::new(snapshots.iter().cloned().collect()),
            upcasters: Arc::new(upcasters),
            inline,
        }
    }

    /// The store for `A`: snapshotting if configured, upcasting on every load.
    pub fn store<A: Upcast>(&self) -> Store<A> {
        let every = self.snapshot_every.get(A::TYPE).copied();
        let repository = ChronicleRepository::new(
            self.pool.clone(),
            every.unwrap_or(0),
            self.vault.clone(),
            self.inline.clone(),
        );
        let store = match every {
            Some(every) => PersistedEventStore::new_snapshot_store(repository, every),
            None => PersistedEventStore::new_event_store(repository),
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
