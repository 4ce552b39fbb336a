//! Issued keys as last read from `api_keys`, kept in memory so that a request does not read
//! the table: a presented secret is still verified against the kept hash every time.
//!
//! A kept key is forgotten when it is revoked (through this instance at once; through any
//! other within the live log's latency, by its `ClientKeyRevoked`), when revocations were
//! missed, and at the latest `KEEP_FOR` after it was read. A read that raced a revocation
//! is not kept: every forgetting moves a generation, and a key read before that move is
//! served but not stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronicle_aggregates::client::Role;
use tokio_util::sync::CancellationToken;

use super::revocations::{Revocation, Revocations};

/// How long a kept key is trusted without reading `api_keys` again.
const KEEP_FOR: Duration = Duration::from_secs(5);

/// Keys kept at most; beyond, the oldest half is dropped (a flood of unknown key ids keeps
/// nothing: only issued keys are kept).
const CAPACITY: usize = 10_000;

/// An issued, unrevoked key as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedKey {
    /// The client it belongs to.
    pub client_id: String,
    /// What it may do.
    pub role: Role,
    /// Its secret's HMAC under the pepper.
    pub hash: String,
}

/// The kept keys of one instance; cheap to clone.
#[derive(Clone, Default)]
pub struct KnownKeys {
    inner: Arc<Mutex<Kept>>,
}

#[derive(Default)]
struct Kept {
    keys: HashMap<String, (IssuedKey, Instant)>,
    generation: u64,
}

/// Where the kept keys stood before a read: a read is kept only if nothing was forgotten since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(u64);

impl KnownKeys {
    /// The kept key `key_id`, if read within the last five seconds; otherwise the generation
    /// to keep a fresh read under.
    pub fn get(&self, key_id: &str) -> Result<IssuedKey, Generation> {
        let Ok(kept) = self.inner.lock() else {
            return Err(Generation(u64::MAX));
        };
        match kept.keys.get(key_id) {
            Some((key, read_at)) if read_at.elapsed() < KEEP_FOR => Ok(key.clone()),
            _ => Err(Generation(kept.generation)),
        }
    }

    /// Keeps `key`, read at `generation`, unless something was forgotten since.
    pub fn keep(&self, key_id: &str, key: IssuedKey, generation: Generation) {
        let Ok(mut kept) = self.inner.lock() else {
            return;
        };
        if kept.generation != generation.0 {
            return;
        }
        if kept.keys.len() >= CAPACITY {
            let mut ages: Vec<Instant> = kept.keys.values().map(|(_, at)| *at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            kept.keys.retain(|_, (_, at)| *at > cut);
        }
        kept.keys.insert(key_id.to_owned(), (key, Instant::now()));
    }

    /// Forgets `key_id` (revoked).
    pub fn forget(&self, key_id: &str) {
        if let Ok(mut kept) = self.inner.lock() {
            kept.keys.remove(key_id);
            kept.generation += 1;
        }
    }

    /// Forgets every key (revocations were missed).
    fn forget_all(&self) {
        if let Ok(mut kept) = self.inner.lock() {
            kept.keys.clear();
            kept.generation += 1;
        }
    }

    /// Forgets each key revoked through any instance, until `shutdown`.
    pub fn follow(&self, revocations: &Revocations, shutdown: CancellationToken) {
        let (known, mut watch) = (self.clone(), revocations.watch());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    news = watch.next() => match news {
                        Revocation::Key(key_id) => known.forget(&key_id),
                        Revocation::Missed => known.forget_all(),
                    },
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> IssuedKey {
        IssuedKey {
            client_id: "c".into(),
            role: Role::Client,
            hash: "h".into(),
        }
    }

    #[test]
    fn a_kept_key_is_served_until_forgotten() {
        let known = KnownKeys::default();
        let Err(generation) = known.get("k") else {
            panic!("nothing kept yet");
        };
        known.keep("k", key(), generation);
        assert_eq!(known.get("k"), Ok(key()));
        known.forget("k");
        assert!(known.get("k").is_err());
    }

    #[test]
    fn a_read_that_raced_a_revocation_is_not_kept() {
        let known = KnownKeys::default();
        let Err(generation) = known.get("k") else {
            panic!("nothing kept yet");
        };
        // Revoked while the key was being read: the read may predate the revocation.
        known.forget("k");
        known.keep("k", key(), generation);
        assert!(known.get("k").is_err());
    }

    #[test]
    fn missed_revocations_forget_everything() {
        let known = KnownKeys::default();
        for id in ["a", "b"] {
            let Err(generation) = known.get(id) else {
                panic!("nothing kept yet");
            };
            known.keep(id, key(), generation);
        }
        known.forget_all();
        assert!(known.get("a").is_err() && known.get("b").is_err());
    }
}
