//! The batch each (owner, endpoint, model) last found open on this instance: where the next
//! submission starts looking, instead of reading `batch_heads`. Batches only ever move on to
//! their successor, so a hint that another instance made stale is an older batch of the same
//! chain, and the walk from it reaches the open one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chronicle_aggregates::batch::BatchKey;
use uuid::Uuid;

/// Keys remembered at most; beyond, the hints start over (each is one read to rebuild).
const CAPACITY: usize = 10_000;

/// A batch key as a map key: owner, endpoint path, model.
type HintKey = (String, String, String);

/// Open-batch hints of one instance; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct OpenBatches {
    hints: Arc<Mutex<HashMap<HintKey, Uuid>>>,
}

fn hint_key(key: &BatchKey) -> HintKey {
    (
        key.owner.clone(),
        key.endpoint.path().to_owned(),
        key.model.clone(),
    )
}

impl OpenBatches {
    /// The batch `key` was last found open in, if remembered.
    pub(super) fn get(&self, key: &BatchKey) -> Option<Uuid> {
        self.hints.lock().ok()?.get(&hint_key(key)).copied()
    }

    /// Remembers that `key`'s open batch is `batch_id`.
    pub(super) fn remember(&self, key: &BatchKey, batch_id: Uuid) {
        if let Ok(mut hints) = self.hints.lock() {
            if hints.len() >= CAPACITY {
                hints.clear();
            }
            hints.insert(hint_key(key), batch_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use chronicle_aggregates::Endpoint;

    use super::*;

    #[test]
    fn a_hint_is_kept_per_owner_endpoint_and_model() {
        let open = OpenBatches::default();
        let key = |owner: &str| BatchKey {
            owner: owner.into(),
            endpoint: Endpoint::ChatCompletions,
            model: "m".into(),
        };
        let batch = Uuid::now_v7();
        assert_eq!(open.get(&key("a")), None);
        open.remember(&key("a"), batch);
        assert_eq!(open.get(&key("a")), Some(batch));
        assert_eq!(open.get(&key("b")), None);
    }
}
