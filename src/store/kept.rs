//! Snapshots this instance wrote, kept in memory: for an aggregate snapshotted on every
//! append (batches), the last snapshot is its whole current state, so the next command on it
//! decides without reading it back. A kept state that another writer has overtaken is not a
//! risk: the append's sequence is then taken and it fails as a conflict, which forgets the
//! kept state, and the command decides again on a fresh load; a command refused on a kept
//! state is decided again on a fresh load too (another instance may have moved the aggregate
//! on, so the refusal may be stale), and reads that decide no command never use them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

/// Aggregates kept at most; beyond, the kept states start over (each is one load to rebuild).
const CAPACITY: usize = 10_000;

/// One aggregate's state as of its last event, with the sequence and snapshot counter.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct KeptState {
    pub(super) payload: Value,
    pub(super) last_sequence: i64,
    pub(super) counter: i64,
}

/// The kept states of one instance, by aggregate type and id; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct KeptSnapshots {
    states: Arc<Mutex<HashMap<(&'static str, String), KeptState>>>,
}

impl KeptSnapshots {
    /// The kept state of aggregate `id` of `aggregate_type`.
    pub(super) fn get(&self, aggregate_type: &'static str, id: &str) -> Option<KeptState> {
        let states = self.states.lock().ok()?;
        states.get(&(aggregate_type, id.to_owned())).cloned()
    }

    /// Keeps `state` as aggregate `id`'s.
    pub(super) fn keep(&self, aggregate_type: &'static str, id: &str, state: KeptState) {
        if let Ok(mut states) = self.states.lock() {
            if states.len() >= CAPACITY {
                states.clear();
            }
            states.insert((aggregate_type, id.to_owned()), state);
        }
    }

    /// Forgets aggregate `id`'s state (its append failed, or a command was refused on it:
    /// it may be stale).
    pub(super) fn forget(&self, aggregate_type: &'static str, id: &str) {
        if let Ok(mut states) = self.states.lock() {
            states.remove(&(aggregate_type, id.to_owned()));
        }
    }
}
