//! Key revocations as they are committed, pushed to every open websocket of this instance.
//!
//! A websocket authenticates once, at its start; a key revoked afterwards must stop it. Each
//! instance follows the log's `ClientKeyRevoked` events (so a revocation made through any
//! instance reaches all of them) and broadcasts the key ids; each socket closes when its own
//! key is named.

use futures::StreamExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::log::{LiveLog, LogFilter};

/// Revocations a socket may miss before it must re-check its key with the database.
const BACKLOG: usize = 256;

/// The revocations committed since this instance started; cheap to clone.
#[derive(Clone)]
pub struct Revocations {
    sender: broadcast::Sender<String>,
}

/// One socket's view of the revocations, from the moment it was made.
pub struct RevocationWatch {
    receiver: broadcast::Receiver<String>,
}

/// What a watch learned about one key.
#[derive(Debug, PartialEq, Eq)]
pub enum KeyNews {
    /// The key was revoked.
    Revoked,
    /// Revocations were missed (too many at once): check the key with the database.
    Unknown,
}

impl Revocations {
    /// Follows the live log from its head until `shutdown`.
    pub fn start(live: &LiveLog, shutdown: CancellationToken) -> Self {
        let (sender, _) = broadcast::channel(BACKLOG);
        let revocations = Self { sender };
        tokio::spawn(revocations.clone().follow(live.clone(), shutdown));
        revocations
    }

    /// A watch that sees every revocation committed from now on.
    pub fn watch(&self) -> RevocationWatch {
        RevocationWatch {
            receiver: self.sender.subscribe(),
        }
    }

    async fn follow(self, live: LiveLog, shutdown: CancellationToken) {
        let filter = LogFilter {
            aggregate_types: Some(vec!["Client".to_owned()]),
            event_types: Some(vec!["ClientKeyRevoked".to_owned()]),
            ..LogFilter::default()
        };
        let mut revoked = std::pin::pin!(live.tail(live.head(), filter));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = revoked.next() => {
                    let Some(event) = event else { return };
                    if let Some(key_id) = event.payload.pointer("/KeyRevoked/key_id").and_then(|id| id.as_str()) {
                        // No socket open is not an error.
                        let _ = self.sender.send(key_id.to_owned());
                    }
                }
            }
        }
    }
}

/// The next thing a watch learned.
#[derive(Debug, PartialEq, Eq)]
pub enum Revocation {
    /// This key was revoked.
    Key(String),
    /// Revocations were missed (too many at once): any key may have been revoked.
    Missed,
}

impl RevocationWatch {
    /// Waits for the next revocation.
    pub async fn next(&mut self) -> Revocation {
        match self.receiver.recv().await {
            Ok(revoked) => Revocation::Key(revoked),
            Err(broadcast::error::RecvError::Lagged(_)) => Revocation::Missed,
            // The follower stopped (shutdown): nothing more will come.
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }

    /// Waits until `key_id` is revoked, or until revocations were missed.
    pub async fn next_about(&mut self, key_id: &str) -> KeyNews {
        loop {
            match self.next().await {
                Revocation::Key(revoked) if revoked == key_id => return KeyNews::Revoked,
                Revocation::Key(_) => {}
                Revocation::Missed => return KeyNews::Unknown,
            }
        }
    }
}
