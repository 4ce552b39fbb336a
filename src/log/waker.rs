//! Wakes this instance's consumers when something is committed anywhere: events appended, a
//! projection's page applied, a projection's checkpoint reset.
//!
//! One LISTEN connection per instance; each notification bumps a counter that any number of
//! consumers watch. An append's notification names the last log position it drew, which the
//! waker keeps (the highest so far: positions are drawn in commit order, and notifications
//! arrive in commit order), so the live log can tell whether it holds everything already.
//! PostgreSQL delivers every notification of a committed transaction to a connected
//! listener, and after a reconnection every counter is bumped and a resynchronization is
//! counted (something may have been missed), so the consumers' fallback poll only guards
//! against the unforeseen: it can be long, and an idle instance stays quiet.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Events were appended (a statement trigger on `events`).
const EVENTS: &str = "chronicle_events";
/// An operator changed a projection: a rebuild asked for or swapped in, a parked event
/// resolved.
const RESETS: &str = "chronicle_resets";
/// A projector applied a page: read models changed (`ProjectionRunner`).
const PROJECTED: &str = "chronicle_projected";
/// An instance joined, left or handed a role's partition on (`Roles`).
const INSTANCES: &str = "chronicle_instances";

/// What the append notifications told so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notified {
    /// The highest log position an append's notification named.
    pub through: i64,
    /// How many times notifications may have been missed (listener reconnections, a
    /// notification without a position); changes whenever that happens.
    pub resyncs: u64,
}

/// The positions appends' notifications named and the resynchronizations, shared by the
/// listener and the handles.
#[derive(Default)]
struct Positions {
    through: AtomicI64,
    resyncs: AtomicU64,
}

/// A handle consumers use to wait for what they follow.
#[derive(Clone)]
pub struct LogWaker {
    positions: Arc<Positions>,
    events: watch::Receiver<u64>,
    resets: watch::Receiver<u64>,
    instances: watch::Receiver<u64>,
    projected: Arc<Projected>,
    poll: Duration,
}

/// The counters the listener bumps.
struct Senders {
    positions: Arc<Positions>,
    events: watch::Sender<u64>,
    resets: watch::Sender<u64>,
    instances: watch::Sender<u64>,
    projected: Arc<Projected>,
}

/// Counters of projections' applied pages: one for any projection, one per set of
/// projections some worker follows (a notification naming none of a set leaves it alone;
/// names nobody follows, forged ones included, change nothing else).
struct Projected {
    any: watch::Sender<u64>,
    followed: Mutex<Vec<(&'static [&'static str], watch::Sender<u64>)>>,
}

impl Projected {
    fn new() -> Self {
        Self {
            any: watch::channel(0).0,
            followed: Mutex::default(),
        }
    }

    fn followed(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(&'static [&'static str], watch::Sender<u64>)>> {
        self.followed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `projection` applied a page (`None`: anything may have changed).
    fn bump(&self, projection: Option<&str>) {
        bump(&self.any);
        for (names, sender) in self.followed().iter() {
            if projection.is_none_or(|name| names.contains(&name)) {
                bump(sender);
            }
        }
    }

    /// The counter of `names`, made on first use.
    fn of(&self, names: &'static [&'static str]) -> watch::Receiver<u64> {
        let mut followed = self.followed();
        if let Some((_, sender)) = followed.iter().find(|(known, _)| *known == names) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(0);
        followed.push((names, sender));
        receiver
    }
}

fn bump(sender: &watch::Sender<u64>) {
    sender.send_modify(|tick| *tick = tick.wrapping_add(1));
}

impl Senders {
    fn notified(&self, channel: &str, payload: &str) {
        match channel {
            RESETS => bump(&self.resets),
            INSTANCES => bump(&self.instances),
            PROJECTED => self.projected.bump(Some(payload)),
            _ => {
                // Recorded before the bump, so a woken consumer sees it.
                if let Ok(position) = payload.parse::<i64>() {
                    self.positions.through.fetch_max(position, Ordering::AcqRel);
                } else {
                    self.positions.resyncs.fetch_add(1, Ordering::AcqRel);
                }
                bump(&self.events);
            }
        }
    }

    fn all(&self) {
        self.positions.resyncs.fetch_add(1, Ordering::AcqRel);
        bump(&self.events);
        bump(&self.resets);
        bump(&self.instances);
        self.projected.bump(None);
    }
}

fn unchanged(receiver: &watch::Receiver<u64>) -> watch::Receiver<u64> {
    let mut receiver = receiver.clone();
    receiver.mark_unchanged();
    receiver
}

impl LogWaker {
    /// Starts listening on `pool`'s database until `shutdown`; consumers with nothing to do
    /// look again after `poll` at the latest.
    pub fn start(pool: &PgPool, poll: Duration, shutdown: CancellationToken) -> Self {
        let (events_sender, events) = watch::channel(0);
        let (resets_sender, resets) = watch::channel(0);
        let (instances_sender, instances) = watch::channel(0);
        let projected = Arc::new(Projected::new());
        let positions = Arc::new(Positions::default());
        let senders = Senders {
            positions: positions.clone(),
            events: events_sender,
            resets: resets_sender,
            instances: instances_sender,
            projected: projected.clone(),
        };
        tokio::spawn(listen(pool.clone(), senders, shutdown));
        Self {
            positions,
            events,
            resets,
            instances,
            projected,
            poll,
        }
    }

    /// Changes each time an operator changes a projection anywhere (a rebuild asked for or
    /// swapped in, a parked event resolved), and after every reconnection of the listener
    /// (a change may have been missed).
    pub fn resets(&self) -> watch::Receiver<u64> {
        unchanged(&self.resets)
    }

    /// Changes each time an instance joins, leaves or hands a role's partition on, and after
    /// every reconnection of the listener.
    pub fn instances_changed(&self) -> watch::Receiver<u64> {
        unchanged(&self.instances)
    }

    /// How long anything idle waits for a notification before it looks anyway.
    pub fn poll_every(&self) -> Duration {
        self.poll
    }

    /// What the append notifications told so far.
    pub fn notified(&self) -> Notified {
        Notified {
            through: self.positions.through.load(Ordering::Acquire),
            resyncs: self.positions.resyncs.load(Ordering::Acquire),
        }
    }

    /// How many wake-ups there were so far (wrapping): it changes with every notification.
    pub fn generation(&self) -> u64 {
        *self.events.borrow()
    }

    /// A waiter for one consumer of the log; call [`Waiter::wait`] when the log had nothing
    /// new.
    pub fn waiter(&self) -> Waiter {
        Waiter {
            ticks: unchanged(&self.events),
            poll: self.poll,
        }
    }

    /// A waiter for one consumer of read models: it wakes when a projector applied a page
    /// anywhere.
    pub fn projections_waiter(&self) -> Waiter {
        Waiter {
            ticks: self.projected.any.subscribe(),
            poll: self.poll,
        }
    }

    /// A waiter for a worker that reads the read models of `projections`: it wakes when one
    /// of them applied a page (not for the others', which cannot give it work).
    pub fn following(&self, projections: &'static [&'static str]) -> Waiter {
        Waiter {
            ticks: self.projected.of(projections),
            poll: self.poll,
        }
    }
}

/// One consumer's view of the wake-ups.
pub struct Waiter {
    ticks: watch::Receiver<u64>,
    poll: Duration,
}

impl Waiter {
    /// Returns after the next notification or the poll interval, whichever is first.
    pub async fn wait(&mut self) {
        self.wait_until(None).await;
    }

    /// Returns after the next notification, at `deadline` (a consumer's next known piece of
    /// timed work), or after the poll interval, whichever is first.
    pub async fn wait_until(&mut self, deadline: Option<Instant>) {
        let poll = Instant::now() + self.poll;
        let until = deadline.map_or(poll, |deadline| deadline.min(poll));
        // An error means the listener stopped (shutdown): fall back to the timer.
        if let Ok(Err(_)) = tokio::time::timeout_at(until, self.ticks.changed()).await {
            tokio::time::sleep_until(until).await;
        }
    }
}

async fn listen(pool: PgPool, senders: Senders, shutdown: CancellationToken) {
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for new events; polling meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(error) = listener
            .listen_all([EVENTS, RESETS, PROJECTED, INSTANCES])
            .await
        {
            tracing::warn!(%error, "LISTEN failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        // Anything may have been committed while we were not listening.
        senders.all();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(notification)) => {
                        senders.notified(notification.channel(), notification.payload());
                    }
                    // The connection dropped; try_recv reconnects on the next call.
                    Ok(None) => senders.all(),
                    Err(error) => {
                        tracing::warn!(%error, "notifications interrupted; reconnecting");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}

/// When a worker's next timed piece of work falls due: the earliest time `sql` (a
/// `SELECT min(<timestamptz>) ...` over read models, of the aggregates in the partitions
/// `$1`) answers, as an instant; `None` when there is none (or it cannot be read: the
/// fallback poll looks again).
pub async fn next_due(pool: &PgPool, sql: &str, partitions: &[i32]) -> Option<Instant> {
    let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(sql)
        .bind(partitions)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| {
            tracing::debug!(%error, "cannot read when work is next due");
            None
        });
    let wait = (at? - chrono::Utc::now()).to_std().unwrap_or_default();
    Some(Instant::now() + wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_is_woken_by_the_projections_it_follows_and_by_a_resync_only() {
        let projected = Projected::new();
        let mut any = projected.any.subscribe();
        let mut delivery = projected.of(&["requests", "batches"]);
        let transfers = projected.of(&["transfers"]);
        projected.bump(Some("requests"));
        assert!(any.has_changed().unwrap_or(false));
        assert!(delivery.has_changed().unwrap_or(false));
        assert!(!transfers.has_changed().unwrap_or(true));
        any.mark_unchanged();
        delivery.mark_unchanged();
        projected.bump(Some("forged name"));
        assert!(any.has_changed().unwrap_or(false));
        assert!(!delivery.has_changed().unwrap_or(true));
        assert!(!transfers.has_changed().unwrap_or(true));
        projected.bump(None);
        assert!(delivery.has_changed().unwrap_or(false));
        assert!(transfers.has_changed().unwrap_or(false));
        assert_eq!(
            projected.followed().len(),
            2,
            "one counter per set followed"
        );
        let _same = projected.of(&["transfers"]);
        assert_eq!(projected.followed().len(), 2);
    }
}
