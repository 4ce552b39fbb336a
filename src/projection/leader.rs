//! Roles (a projector set, the rebuilds, a worker) held by one instance at a time, or split
//! into partitions of the aggregate id space that live instances share: session-level
//! advisory locks, all of one instance's on one dedicated connection.
//!
//! A lock lives as long as the connection: if this instance dies or loses its connection,
//! PostgreSQL releases every lock it held and the others take over. One task owns the
//! connection (`claims`). Roles are balanced in groups (every partition of one worker; the
//! roles held whole, together): each group's members hold a shared lock, so an instance
//! knows how many share the group and takes at most its fair part, handing on what it holds
//! beyond that once the work under way there is done ([`Lease`]). While it holds every lock
//! it wants, it sends only a protocol sync (no statement); otherwise it looks for free locks
//! in one statement each `CHRONICLE_STANDBY_RETRY_MS`, and at once when an instance joins or
//! leaves (`NOTIFY chronicle_instances`). The checkpoint's optimistic update (see
//! `chronicle_projections::checkpoint`) and the commands' stream versions guard the short
//! window in which a holder has not yet noticed that it lost its connection.

mod claims;
mod holders;
mod role;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub use holders::{holders, live_instances, Holder, LiveInstance};
use role::Slot;
pub use role::{partition_of, Lease, Role, PARTITIONS};

/// The group of the roles held whole: balanced together across instances.
const WHOLE: &str = "roles";

/// The roles this instance wants, and who is told when one is won or lost.
#[derive(Clone)]
pub struct Roles {
    slots: Arc<Mutex<BTreeMap<String, Slot>>>,
    /// Wakes the owner task when a role is asked for.
    asked: Arc<Notify>,
    /// Live instances on the database, this one included (1 until first counted).
    instances: Arc<watch::Sender<usize>>,
    /// Asks the owner task to count the live instances again.
    count_asked: Arc<Notify>,
    /// Whether this process serves (counts among the live instances and takes its fair
    /// part) or is a tool (takes whatever it asks for that is free).
    serving: bool,
}

/// The live instance count as it changes, and a way to ask for it to be counted again.
#[derive(Clone)]
pub struct InstanceCount {
    /// The count, as counted last.
    pub live: watch::Receiver<usize>,
    asked: Arc<Notify>,
}

impl InstanceCount {
    /// Asks the roles connection to count the live instances again (one read, soon).
    pub fn recount(&self) {
        self.asked.notify_one();
    }
}

impl Roles {
    /// The roles of a tool (a CLI rebuild), and the task to run (spawn it) that claims them
    /// on one connection opened with `options`, asking for missing roles every `retry`,
    /// until `shutdown` (which releases them all, as does dropping the task). A tool is not
    /// a live instance: it does not count in the instances that split the rate limits or
    /// the work.
    pub fn new(
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let roles = Self::empty(false);
        let task = roles.clone().hold(options, retry, shutdown, None);
        (roles, task)
    }

    /// Like [`Roles::new`], for an instance that serves: it counts among the live instances
    /// and shares the work with them, looking again when `joined` changes (an instance
    /// joined or left: `LogWaker::instances_changed`).
    pub fn serving(
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
        joined: watch::Receiver<u64>,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let roles = Self::empty(true);
        let task = roles.clone().hold(options, retry, shutdown, Some(joined));
        (roles, task)
    }

    fn empty(serving: bool) -> Self {
        Self {
            slots: Arc::default(),
            asked: Arc::default(),
            instances: Arc::new(watch::channel(1).0),
            count_asked: Arc::default(),
            serving,
        }
    }

    /// The role `name`, held whole by one instance at a time (`projection.<name>` for
    /// projector sets); it is claimed from now on.
    pub fn role(&self, name: &str) -> Role {
        self.want(name, 1, WHOLE)
    }

    /// The role `name` split into [`PARTITIONS`] partitions that live instances share (a
    /// worker); it is claimed from now on.
    pub fn partitioned(&self, name: &str) -> Role {
        self.want(name, PARTITIONS, name)
    }

    fn want(&self, name: &str, count: u16, group: &str) -> Role {
        let mut slots = self.lock();
        let slot = slots
            .entry(name.to_owned())
            .or_insert_with(|| Slot::new(count, group.to_owned()));
        let role = slot.role(name);
        crate::metrics::role_partitions(name, count);
        crate::metrics::role_held(name, slot.partitions().open.count_ones());
        drop(slots);
        self.asked.notify_one();
        role
    }

    /// How many instances are live on the database, this one included, as counted last:
    /// every instance's roles connection holds a shared lock that the count reads, so a
    /// dead instance leaves the count with its connection. It is counted with every look
    /// for free roles and when [`InstanceCount::recount`] asks: an idle instance reads
    /// nothing.
    pub fn instances(&self) -> InstanceCount {
        InstanceCount {
            live: self.instances.subscribe(),
            asked: self.count_asked.clone(),
        }
    }

    /// The roles this instance claims and their partition counts, sorted by name.
    pub fn described(&self) -> Vec<(String, u16)> {
        self.lock()
            .iter()
            .map(|(name, slot)| (name.clone(), slot.count))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The advisory lock of a role's partition: `chronicle.<role>` for a role held whole,
/// `chronicle.<role>/<partition>` otherwise.
fn lock_key(role: &str, count: u16, partition: u16) -> String {
    if count == 1 {
        format!("chronicle.{role}")
    } else {
        format!("chronicle.{role}/{partition}")
    }
}

/// The lock a group's members hold shared (as many holders as instances share the group).
fn member_key(group: &str) -> String {
    format!("chronicle.members.{group}")
}

/// The lock every live instance holds shared (not a role: no one holds it alone).
const INSTANCE_KEY: &str = "chronicle.instance";

/// Matches a granted advisory lock `l` of this database to the key in `{key}`.
macro_rules! advisory_lock_of {
    ($key:literal) => {
        concat!(
            "l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended(",
            $key,
            ", 0)"
        )
    };
}
use advisory_lock_of;
