//! One role as its holder sees it: which of its partitions this instance holds, and the
//! leases that keep a partition from being handed on while work on it is under way.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How many partitions the aggregate id space of a partitioned role is split into: at most
/// this many instances share one worker's work.
pub const PARTITIONS: u16 = 32;

/// The partition of `id` among [`PARTITIONS`]: from its last byte, random in every UUID
/// Chronicle makes (v4, v7, and v5 derived ids). The SQL function `chronicle_partition`
/// (migration 22) computes the same.
pub fn partition_of(id: Uuid) -> u16 {
    u16::from(id.as_bytes()[15]) % PARTITIONS
}

/// The mask of every partition of a role of `count` partitions.
pub(super) fn all(count: u16) -> u64 {
    if count >= 64 {
        u64::MAX
    } else {
        (1 << count) - 1
    }
}

/// The partitions of one role on this instance (bit `i` is partition `i`).
#[derive(Debug)]
pub(super) struct Partitions {
    /// Locked by this instance and open to new work.
    pub(super) open: u64,
    /// Locked by this instance: open, or being handed on (draining its leases).
    pub(super) locked: u64,
    /// One per partition; work under way holds a clone ([`Lease`]).
    pub(super) leases: Vec<Arc<()>>,
    /// One per partition, cancelled when it closes: long work stops early to hand it on.
    closing: Vec<CancellationToken>,
}

impl Partitions {
    /// Partition `p` was locked here: open it to work.
    pub(super) fn open(&mut self, p: u16) {
        self.open |= 1 << p;
        self.locked |= 1 << p;
        self.closing[usize::from(p)] = CancellationToken::new();
    }

    /// Closes partition `p` to new work, telling the work under way (it stays locked).
    pub(super) fn close(&mut self, p: u16) {
        self.open &= !(1 << p);
        self.closing[usize::from(p)].cancel();
    }

    /// Partition `p` was unlocked.
    pub(super) fn unlock(&mut self, p: u16) {
        self.close(p);
        self.locked &= !(1 << p);
    }
}

/// What the roles connection keeps of one role.
pub(super) struct Slot {
    /// How many partitions (1: a role held whole).
    pub(super) count: u16,
    /// The roles it is balanced with across instances.
    pub(super) group: String,
    pub(super) state: Arc<Mutex<Partitions>>,
    /// Tells the role's holders which partitions are open.
    pub(super) open: watch::Sender<u64>,
}

impl Slot {
    pub(super) fn new(count: u16, group: String) -> Self {
        let state = Partitions {
            open: 0,
            locked: 0,
            leases: (0..count).map(|_| Arc::new(())).collect(),
            closing: (0..count).map(|_| CancellationToken::new()).collect(),
        };
        Self {
            count,
            group,
            state: Arc::new(Mutex::new(state)),
            open: watch::channel(0).0,
        }
    }

    pub(super) fn partitions(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the partitions under the lock and tells the holders what is open now.
    pub(super) fn update(&self, change: impl FnOnce(&mut Partitions)) {
        let mut partitions = self.partitions();
        change(&mut partitions);
        self.open.send_replace(partitions.open);
    }

    pub(super) fn role(&self, name: &str) -> Role {
        Role {
            name: name.into(),
            count: self.count,
            state: self.state.clone(),
            open: self.open.subscribe(),
        }
    }
}

/// A role: work one instance at a time does, whole (a projector set, the rebuilds) or split
/// into [`PARTITIONS`] partitions of the aggregate id space (a worker), each partition held
/// by one instance at a time.
#[derive(Clone)]
pub struct Role {
    name: Arc<str>,
    count: u16,
    state: Arc<Mutex<Partitions>>,
    open: watch::Receiver<u64>,
}

/// Work under way on one partition: while any lease of a partition lives, this instance
/// does not hand the partition on to another (up to a bound, see `DRAIN_LIMIT`).
#[derive(Debug)]
pub struct Lease {
    _held: Arc<()>,
    closing: CancellationToken,
}

impl Lease {
    /// Resolves when the partition closes (it is being handed on, or the instance stops):
    /// long work stops at a safe point and records where it got to.
    pub async fn closing(&self) {
        self.closing.cancelled().await;
    }

    /// Whether the partition is closing (see [`Lease::closing`]).
    pub fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }
}

impl Role {
    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this instance holds the role now (some partition of it, when partitioned).
    pub fn is_held(&self) -> bool {
        *self.open.borrow() != 0
    }

    /// The partitions this instance holds now, for a query's `chronicle_partition(id) =
    /// ANY($n)`; for a role held whole, every partition while it is held.
    pub fn partitions(&self) -> Vec<i32> {
        let open = *self.open.borrow();
        if self.count == 1 {
            return if open == 0 {
                Vec::new()
            } else {
                (0..i32::from(PARTITIONS)).collect()
            };
        }
        (0..self.count)
            .filter(|partition| open & (1 << partition) != 0)
            .map(i32::from)
            .collect()
    }

    /// A lease on the partition of `id` if this instance holds it now: work on `id` runs
    /// while holding it.
    pub fn lease(&self, id: Uuid) -> Option<Lease> {
        let partition = if self.count == 1 { 0 } else { partition_of(id) };
        self.lease_partition(partition)
    }

    fn lease_partition(&self, partition: u16) -> Option<Lease> {
        let partitions = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (partitions.open & (1 << partition) != 0).then(|| Lease {
            _held: partitions.leases[usize::from(partition)].clone(),
            closing: partitions.closing[usize::from(partition)].clone(),
        })
    }

    /// Whether this instance holds the role within `wait` (for one-off tools that must not
    /// wait for a running instance to let go).
    pub async fn acquired_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.acquired()).await.is_ok()
    }

    /// Waits until this instance holds the role (some partition of it).
    pub async fn acquired(&mut self) {
        // An error means the roles task stopped (shutdown): the role never comes.
        if self.open.wait_for(|open| *open != 0).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until this instance holds no partition of the role (its connection was lost,
    /// the role went to another instance, or the instance is stopping).
    pub async fn lost(&mut self) {
        let _ = self.open.wait_for(|open| *open == 0).await;
    }

    /// Waits until the partitions this instance holds change (a worker then looks for work
    /// in the ones it gained).
    pub async fn changed(&mut self) {
        if self.open.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Runs `lead` each time this instance wins the role, until `shutdown`. `lead` returns
    /// when it sees the role lost ([`Role::is_held`]) or the shutdown, finishing what it is
    /// doing first; when it returns on its own (a failure) while the role is still held, it
    /// runs again after `pause`. A role held whole is leased while `lead` runs, so it is
    /// handed on only once `lead` returned; a partitioned one's work takes its own leases.
    pub async fn lead_while_held<F, Fut>(
        mut self,
        pause: Duration,
        shutdown: &CancellationToken,
        mut lead: F,
    ) where
        F: FnMut(Role) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = self.acquired() => {}
                () = shutdown.cancelled() => return,
            }
            let lease = if self.count == 1 {
                self.lease_partition(0)
            } else {
                None
            };
            lead(self.clone()).await;
            drop(lease);
            if self.is_held() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_over_the_last_byte() {
        let mut seen = [0u32; PARTITIONS as usize];
        for byte in 0..=255u8 {
            let mut bytes = [0u8; 16];
            bytes[15] = byte;
            seen[usize::from(partition_of(Uuid::from_bytes(bytes)))] += 1;
        }
        assert!(seen.iter().all(|n| *n == 256 / u32::from(PARTITIONS)));
    }

    #[test]
    fn a_lease_is_given_only_on_an_open_partition_and_counts_while_it_lives() {
        let slot = Slot::new(PARTITIONS, "delivery".into());
        let role = slot.role("delivery");
        let id = Uuid::now_v7();
        let partition = partition_of(id);
        assert!(role.lease(id).is_none());
        slot.update(|p| p.open(partition));
        assert!(role.is_held());
        assert_eq!(role.partitions(), vec![i32::from(partition)]);
        let lease = role.lease(id).expect("open partition");
        assert_eq!(
            Arc::strong_count(&slot.partitions().leases[usize::from(partition)]),
            2
        );
        slot.update(|p| p.close(partition));
        assert!(role.lease(id).is_none(), "closed to new work");
        assert!(lease.closing.is_cancelled(), "the work under way is told");
        drop(lease);
        assert_eq!(
            Arc::strong_count(&slot.partitions().leases[usize::from(partition)]),
            1
        );
    }

    #[test]
    fn a_whole_role_leases_any_id_and_lists_every_partition() {
        let slot = Slot::new(1, "roles".into());
        let role = slot.role("projections");
        slot.update(|p| p.open(0));
        assert!(role.lease(Uuid::now_v7()).is_some());
        assert_eq!(role.partitions().len(), usize::from(PARTITIONS));
    }
}
