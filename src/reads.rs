//! Where a GraphQL request reads: the primary, or a streaming replica of it
//! (`CHRONICLE_READ_DATABASE_URL`, PostgreSQL's own physical replication).
//!
//! A request without a mutation (a query) reads the read models and the log from the replica
//! while the replica answers; mutations, subscriptions, the admin views of live state (roles,
//! instances, keys) and every worker use the primary. A query that names a log position
//! (`x-chronicle-after`) is served by the replica once the read models there have applied the
//! log up to it (the replica replays commits in log order, so its checkpoints and tables are
//! those the primary had then), or by the primary when the replica has not within
//! `CHRONICLE_REPLICA_WAIT_MS`. `chronicle_replica_queries_total{outcome}` counts where queries
//! went, `chronicle_replica_lag_events` how far behind the replica is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::LogCursor;
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::log::{LiveLog, LogReader};
use crate::projection::{NotYet, ReadModels};

/// How often the replica's health and lag are checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// A check that takes longer finds the replica down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The database a request reads read models and the log from.
#[derive(Clone)]
pub struct Reads {
    /// Its pool.
    pub pool: PgPool,
    /// The log, read from there.
    pub log: LogReader,
}

/// Decides where each request reads; cheap to clone.
#[derive(Clone)]
pub struct ReadRouter {
    read_models: ReadModels,
    replica: Option<(Replica, Duration)>,
}

/// A streaming replica and what its last health check found, shared by the router and the
/// live log's catch-up reads; cheap to clone.
#[derive(Clone)]
pub struct Replica {
    /// Its pool and log.
    pub reads: Reads,
    /// The last check reached it (false until the first one does).
    up: Arc<AtomicBool>,
}

impl Replica {
    /// `reads` on a replica, not yet checked.
    pub fn new(reads: Reads) -> Self {
        Self {
            reads,
            up: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the last check reached it.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

impl ReadRouter {
    /// Every read from the primary, whose read models are `read_models`.
    pub fn primary(read_models: ReadModels) -> Self {
        Self {
            read_models,
            replica: None,
        }
    }

    /// Queries read from `replica` while it answers, waiting at most `wait` for it to reach
    /// a position; its health and lag (behind `live`'s head) are checked now and then every
    /// second until `shutdown`.
    pub async fn with_replica(
        self,
        replica: Replica,
        wait: Duration,
        live: LiveLog,
        shutdown: CancellationToken,
    ) -> Self {
        check(&replica, &live).await;
        tokio::spawn(watch(replica.clone(), live, shutdown));
        Self {
            replica: Some((replica, wait)),
            ..self
        }
    }

    /// Where a request reads once the position it names (if any) has been applied:
    /// `Some(the replica)` or `None` (the primary). `reads_only` requests (no mutation) may
    /// go to the replica.
    ///
    /// # Errors
    /// [`NotYet`]: not even the primary's read models reached `after` within `within`.
    pub async fn route(
        &self,
        reads_only: bool,
        after: Option<LogCursor>,
        within: Duration,
    ) -> Result<Option<Reads>, NotYet> {
        let (replica, wait) = match &self.replica {
            Some((replica, wait)) if reads_only => (replica, *wait),
            _ => return self.primary_after(after, within).await.map(|()| None),
        };
        if !replica.is_up() {
            crate::metrics::replica_query("unreachable");
            return self.primary_after(after, within).await.map(|()| None);
        }
        let started = Instant::now();
        let replayed = match after {
            None => true,
            Some(position) => {
                (self.read_models)
                    .wait_replayed(&replica.reads.pool, position, wait.min(within))
                    .await
            }
        };
        if replayed {
            crate::metrics::replica_query("served");
            return Ok(Some(replica.reads.clone()));
        }
        crate::metrics::replica_query("lagging");
        let left = within.saturating_sub(started.elapsed());
        self.primary_after(after, left).await.map(|()| None)
    }

    /// Waits for the primary's read models to pass `after`, if given.
    async fn primary_after(
        &self,
        after: Option<LogCursor>,
        within: Duration,
    ) -> Result<(), NotYet> {
        match after {
            Some(position) => self.read_models.wait_past(position, within).await,
            None => Ok(()),
        }
    }
}

/// Checks the replica every [`CHECK_EVERY`] until `shutdown`.
async fn watch(replica: Replica, live: LiveLog, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(CHECK_EVERY) => {}
            () = shutdown.cancelled() => return,
        }
        check(&replica, &live).await;
    }
}

/// Reads the replica's log head: whether it answered in time is its health; the lag is the
/// live log's head minus the replica's.
async fn check(replica: &Replica, live: &LiveLog) {
    let answered = match tokio::time::timeout(CHECK_TIMEOUT, replica.reads.log.head()).await {
        Ok(Ok(head)) => {
            let lag = live.head().position.saturating_sub(head.position);
            crate::metrics::replica_lag(lag.max(0));
            true
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "read replica check failed");
            false
        }
        Err(_) => false,
    };
    let was = replica.up.swap(answered, Ordering::Relaxed);
    if was != answered {
        if answered {
            tracing::info!("the read replica answers: queries read from it");
        } else {
            tracing::warn!("the read replica does not answer: queries read from the primary");
        }
    }
    crate::metrics::replica_up(answered);
}
