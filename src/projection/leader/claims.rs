//! The roles connection: claims free locks up to this instance's fair part, hands on what
//! it holds beyond it once drained, and releases everything at shutdown or with the
//! connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::role::all;
use super::{advisory_lock_of, lock_key, member_key, Roles, INSTANCE_KEY};

/// The longest a partition being handed on waits for its work under way; after that it is
/// released anyway (the new holder's commands then meet the old one's on stream versions).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How often a drain looks at its partition's leases.
const DRAIN_CHECK: Duration = Duration::from_millis(25);
/// How long a stopping instance waits for its work under way before releasing its locks.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);
/// The longest one exchange on the roles connection may take: beyond it the connection
/// counts as lost (a network that drops packets must not hold shutdown or a look).
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

/// Members of each group asked for (shared locks, as `$1`), and which of the keys in `$2`
/// nobody holds.
const LOOK: &str = concat!(
    "SELECT (SELECT array_agg(holders ORDER BY n) FROM (
                SELECT g.n, count(l.pid) AS holders
                  FROM unnest($1::text[]) WITH ORDINALITY AS g(key, n)
                  LEFT JOIN pg_locks l ON l.mode = 'ShareLock' AND ",
    advisory_lock_of!("g.key"),
    " GROUP BY g.n) AS counted) AS members,
            array(SELECT k.key FROM unnest($2::text[]) AS k(key)
                   WHERE NOT EXISTS (SELECT 1 FROM pg_locks l WHERE ",
    advisory_lock_of!("k.key"),
    ")) AS free"
);

/// The membership of a role held whole: its own member lock, so that a role only one
/// instance wants is not left to the balance.
fn whole_membership(role: &str) -> String {
    format!("role.{role}")
}

/// One partition of one role.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Part {
    role: String,
    partition: u16,
}

/// A partition whose work is drained, to release on the connection it was claimed on.
struct Drained {
    part: Part,
    connection: u64,
}

/// What one look decided: partitions to try for, partitions to hand on.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) claim: Vec<Part>,
    pub(super) release: Vec<Part>,
}

/// One role's partitions as a look sees them.
pub(super) struct View {
    pub(super) role: String,
    pub(super) count: u16,
    pub(super) group: String,
    pub(super) open: u64,
    pub(super) locked: u64,
}

impl View {
    fn key(&self, partition: u16) -> String {
        lock_key(&self.role, self.count, partition)
    }
}

/// Decides a look: in each group, claim free partitions (most preferred first) until this
/// instance holds `ceil(partitions / members)` (every free one, for a tool: `members` has no
/// entry), and hand on the least preferred beyond that. A role held whole that no other
/// instance wants (its own membership counts one) is outside the balance: claimed when free,
/// never handed on.
pub(super) fn plan(
    views: &[View],
    members: &HashMap<String, usize>,
    free: &HashSet<String>,
    prefer: &impl Fn(&str) -> u64,
) -> Plan {
    let mut plan = Plan::default();
    let mut groups: BTreeMap<&str, Vec<&View>> = BTreeMap::new();
    for view in views {
        let sole = view.count == 1 && members.get(&whole_membership(&view.role)) == Some(&1);
        if !sole {
            groups.entry(&view.group).or_default().push(view);
        } else if view.locked == 0 && free.contains(&view.key(0)) {
            plan.claim.push(Part {
                role: view.role.clone(),
                partition: 0,
            });
        }
    }
    for (group, views) in groups {
        let total: usize = views.iter().map(|v| usize::from(v.count)).sum();
        let fair = members
            .get(group)
            .map_or(total, |n| total.div_ceil((*n).max(1)));
        let locked: usize = views.iter().map(|v| v.locked.count_ones() as usize).sum();
        let open = ranked(&views, prefer, |v, bit| v.open & bit != 0);
        if locked < fair {
            let claimable = ranked(&views, prefer, |v, bit| {
                v.locked & bit == 0 && free.contains(&v.key(bit.trailing_zeros() as u16))
            });
            plan.claim
                .extend(claimable.into_iter().rev().take(fair - locked));
        } else if open.len() > fair {
            let beyond = open.len() - fair;
            plan.release.extend(open.into_iter().take(beyond));
        }
    }
    plan
}

/// The partitions of `views` that `which` picks (given the view and the partition's bit),
/// least preferred first.
fn ranked(
    views: &[&View],
    prefer: &impl Fn(&str) -> u64,
    which: impl Fn(&View, u64) -> bool,
) -> Vec<Part> {
    let mut parts: Vec<(u64, Part)> = views
        .iter()
        .flat_map(|v| {
            (0..v.count)
                .filter(|p| which(v, 1 << p))
                .map(|partition| {
                    let part = Part {
                        role: v.role.clone(),
                        partition,
                    };
                    (prefer(&v.key(partition)), part)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    parts.sort();
    parts.into_iter().map(|(_, part)| part).collect()
}

impl Roles {
    /// Owns the connection: claim, keep, and on its loss tell every role and start over.
    pub(super) async fn hold(
        self,
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
        mut joined: Option<watch::Receiver<u64>>,
    ) {
        let prefer = RandomState::new();
        let (drained_tx, mut drained) = mpsc::unbounded_channel();
        let mut connection = 0;
        while !shutdown.is_cancelled() {
            connection += 1;
            match options.connect().await {
                Ok(conn) => {
                    let mut held = Held {
                        conn,
                        connection,
                        prefer: &prefer,
                        drained_tx: drained_tx.clone(),
                        members: HashSet::new(),
                    };
                    let kept = self
                        .keep(&mut held, retry, &shutdown, &mut joined, &mut drained)
                        .await;
                    match kept {
                        // Closing ends the session at once, for the other instances.
                        Ok(()) => {
                            let _ = held.conn.close().await;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the roles connection failed; every role is released");
                        }
                    }
                    self.release_all();
                }
                Err(error) => tracing::warn!(%error, "cannot open the roles connection"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn keep(
        &self,
        held: &mut Held<'_>,
        retry: Duration,
        shutdown: &CancellationToken,
        joined: &mut Option<watch::Receiver<u64>>,
        drained: &mut mpsc::UnboundedReceiver<Drained>,
    ) -> Result<(), sqlx::Error> {
        let mut look = true;
        loop {
            if look || self.missing() {
                bounded(self.look(held)).await?;
            }
            look = tokio::select! {
                () = tokio::time::sleep(retry) => {
                    bounded(held.conn.ping()).await?;
                    false
                }
                () = self.asked.notified() => true,
                () = self.count_asked.notified() => true,
                () = changed(joined) => true,
                Some(done) = drained.recv() => {
                    if done.connection == held.connection {
                        bounded(self.unlock(held, &done.part)).await?;
                    }
                    false
                }
                () = shutdown.cancelled() => return bounded(self.stop(held)).await,
            };
        }
    }

    /// Whether some wanted partition is not locked here (held elsewhere, or free).
    fn missing(&self) -> bool {
        self.lock().values().any(|slot| {
            let partitions = slot.partitions();
            partitions.locked != all(slot.count)
        })
    }

    /// Counts the members of each group, finds the free partitions, and claims or hands on
    /// as [`plan`] decides.
    async fn look(&self, held: &mut Held<'_>) -> Result<(), sqlx::Error> {
        let views = self.views();
        let groups: Vec<String> = {
            let mut groups: Vec<String> = views
                .iter()
                .flat_map(|v| {
                    let whole = (v.count == 1).then(|| whole_membership(&v.role));
                    std::iter::once(v.group.clone()).chain(whole)
                })
                .collect();
            groups.sort();
            groups.dedup();
            groups
        };
        if self.serving {
            held.join(&groups).await?;
        }
        let mut member_keys: Vec<String> = groups.iter().map(|g| member_key(g)).collect();
        member_keys.push(INSTANCE_KEY.to_owned());
        let unlocked: Vec<String> = views
            .iter()
            .flat_map(|v| {
                (0..v.count)
                    .filter(|p| v.locked & (1 << p) == 0)
                    .map(|p| v.key(p))
            })
            .collect();
        let (counts, free): (Option<Vec<i64>>, Vec<String>) = sqlx::query_as(LOOK)
            .bind(&member_keys)
            .bind(&unlocked)
            .fetch_one(&mut held.conn)
            .await?;
        let counts = counts.unwrap_or_default();
        let count = |i: usize| usize::try_from(counts.get(i).copied().unwrap_or(1)).unwrap_or(1);
        let members: HashMap<String, usize> = if self.serving {
            self.counted(count(groups.len()));
            groups
                .iter()
                .enumerate()
                .map(|(i, g)| (g.clone(), count(i)))
                .collect()
        } else {
            HashMap::new()
        };
        let free: HashSet<String> = free.into_iter().collect();
        let prefer = |key: &str| held.prefer.hash_one(key);
        let plan = plan(&views, &members, &free, &prefer);
        self.claim(held, &plan.claim).await?;
        for part in plan.release {
            self.hand_on(held, part);
        }
        Ok(())
    }

    fn views(&self) -> Vec<View> {
        self.lock()
            .iter()
            .map(|(role, slot)| {
                let partitions = slot.partitions();
                View {
                    role: role.clone(),
                    count: slot.count,
                    group: slot.group.clone(),
                    open: partitions.open,
                    locked: partitions.locked,
                }
            })
            .collect()
    }

    fn counted(&self, live: usize) {
        let live = live.max(1);
        self.instances.send_if_modified(|known| {
            let changed = *known != live;
            *known = live;
            changed
        });
        crate::metrics::instances_live(live);
    }

    /// Tries every partition in `parts` in one statement; opens those won.
    async fn claim(&self, held: &mut Held<'_>, parts: &[Part]) -> Result<(), sqlx::Error> {
        if parts.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = parts.iter().map(|part| self.key(part)).collect();
        let won: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_try_advisory_lock(hashtextextended(key, 0))
               FROM unnest($1::text[]) WITH ORDINALITY AS k(key, n) ORDER BY n",
        )
        .bind(&keys)
        .fetch_all(&mut held.conn)
        .await?;
        let slots = self.lock();
        for (part, _) in parts.iter().zip(won).filter(|(_, won)| *won) {
            if let Some(slot) = slots.get(&part.role) {
                slot.update(|p| p.open(part.partition));
                crate::metrics::role_held(&part.role, slot.partitions().open.count_ones());
            }
        }
        Ok(())
    }

    /// Closes `part` to new work and releases it once its leases are gone.
    fn hand_on(&self, held: &Held<'_>, part: Part) {
        let slots = self.lock();
        let Some(slot) = slots.get(&part.role) else {
            return;
        };
        slot.update(|p| p.close(part.partition));
        crate::metrics::role_held(&part.role, slot.partitions().open.count_ones());
        let leases = Arc::downgrade(&slot.partitions().leases[usize::from(part.partition)]);
        let done = Drained {
            part,
            connection: held.connection,
        };
        let tell = held.drained_tx.clone();
        tokio::spawn(async move {
            drain(&leases, DRAIN_LIMIT).await;
            let _ = tell.send(done);
        });
    }

    async fn unlock(&self, held: &mut Held<'_>, part: &Part) -> Result<(), sqlx::Error> {
        sqlx::query(
            "SELECT pg_advisory_unlock(hashtextextended($1, 0)),
                    pg_notify('chronicle_instances', '')",
        )
        .bind(self.key(part))
        .execute(&mut held.conn)
        .await?;
        if let Some(slot) = self.lock().get(&part.role) {
            slot.update(|p| p.unlock(part.partition));
        }
        tracing::info!(role = %part.role, partition = part.partition, "handed on to another instance");
        Ok(())
    }

    /// Closes every partition to new work, waits (a while) for the work under way, and
    /// releases every lock, telling the other instances.
    async fn stop(&self, held: &mut Held<'_>) -> Result<(), sqlx::Error> {
        let leases: Vec<Weak<()>> = {
            let slots = self.lock();
            slots
                .values()
                .flat_map(|slot| {
                    slot.update(|p| (0..slot.count).for_each(|i| p.close(i)));
                    slot.partitions()
                        .leases
                        .iter()
                        .map(Arc::downgrade)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let deadline = Instant::now() + SHUTDOWN_DRAIN;
        for lease in &leases {
            drain(lease, deadline.saturating_duration_since(Instant::now())).await;
        }
        sqlx::query("SELECT pg_advisory_unlock_all(), pg_notify('chronicle_instances', '')")
            .execute(&mut held.conn)
            .await?;
        self.release_all();
        Ok(())
    }

    fn release_all(&self) {
        for (role, slot) in self.lock().iter() {
            slot.update(|p| (0..slot.count).for_each(|i| p.unlock(i)));
            crate::metrics::role_held(role, 0);
        }
    }

    fn key(&self, part: &Part) -> String {
        let count = self.lock().get(&part.role).map_or(1, |slot| slot.count);
        lock_key(&part.role, count, part.partition)
    }
}

/// The roles connection and what belongs to it.
struct Held<'a> {
    conn: PgConnection,
    /// Which connection of this instance it is (drains of an earlier one are stale).
    connection: u64,
    prefer: &'a RandomState,
    drained_tx: mpsc::UnboundedSender<Drained>,
    /// The groups whose member lock this connection holds.
    members: HashSet<String>,
}

impl Held<'_> {
    /// Takes the instance lock and the member lock of each new group, and tells the other
    /// instances, which then rebalance.
    async fn join(&mut self, groups: &[String]) -> Result<(), sqlx::Error> {
        let mut keys: Vec<String> = groups
            .iter()
            .filter(|g| !self.members.contains(*g))
            .map(|g| member_key(g))
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        if self.members.is_empty() {
            keys.push(INSTANCE_KEY.to_owned());
        }
        sqlx::query(
            "SELECT count(pg_advisory_lock_shared(hashtextextended(key, 0))),
                    pg_notify('chronicle_instances', '')
               FROM unnest($1::text[]) AS k(key)",
        )
        .bind(&keys)
        .execute(&mut self.conn)
        .await?;
        self.members.extend(groups.iter().cloned());
        Ok(())
    }
}

/// `exchange`, or a timed-out error after [`EXCHANGE_LIMIT`].
async fn bounded<T>(
    exchange: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    tokio::time::timeout(EXCHANGE_LIMIT, exchange)
        .await
        .unwrap_or_else(|_| Err(sqlx::Error::Io(std::io::ErrorKind::TimedOut.into())))
}

/// Waits until no lease but the slot's own is alive, or `limit`.
async fn drain(leases: &Weak<()>, limit: Duration) {
    let until = Instant::now() + limit;
    while leases.strong_count() > 1 {
        if Instant::now() >= until {
            tracing::warn!(
                "work under way outlasted the hand-over; the partition is released anyway"
            );
            return;
        }
        tokio::time::sleep(DRAIN_CHECK).await;
    }
}

/// Resolves when `joined` changes; never when there is none (a tool) or it closed.
async fn changed(joined: &mut Option<watch::Receiver<u64>>) {
    let Some(receiver) = joined else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(role: &str, count: u16, group: &str, open: u64, locked: u64) -> View {
        View {
            role: role.into(),
            count,
            group: group.into(),
            open,
            locked,
        }
    }

    fn keys(views: &[View]) -> HashSet<String> {
        views
            .iter()
            .flat_map(|v| (0..v.count).map(|p| v.key(p)))
            .collect()
    }

    /// Prefers low partitions, then roles by name: predictable plans.
    fn prefer(key: &str) -> u64 {
        let partition: u64 = key
            .rsplit_once('/')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or(0);
        u64::MAX - partition
    }

    #[test]
    fn alone_an_instance_claims_every_free_partition() {
        let views = [
            view("delivery", 32, "delivery", 0, 0),
            view("projections", 1, "roles", 0, 0),
        ];
        let members = HashMap::from([("delivery".into(), 1), ("roles".into(), 1)]);
        let plan = plan(&views, &members, &keys(&views), &prefer);
        assert_eq!(plan.claim.len(), 33);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn among_three_an_instance_claims_its_fair_part_of_what_is_free() {
        let views = [view("delivery", 32, "delivery", 0b1, 0b1)];
        let members = HashMap::from([("delivery".into(), 3)]);
        let plan = plan(&views, &members, &keys(&views), &prefer);
        let claimed: Vec<u16> = plan.claim.iter().map(|p| p.partition).collect();
        assert_eq!(
            claimed,
            (1..11).collect::<Vec<_>>(),
            "ceil(32 / 3) = 11 in all"
        );
        let only_some_free: HashSet<String> = ["chronicle.delivery/30".to_owned()].into();
        let plan = super::plan(&views, &members, &only_some_free, &prefer);
        assert_eq!(plan.claim.len(), 1, "never a partition held elsewhere");
    }

    #[test]
    fn beyond_its_fair_part_an_instance_hands_on_its_least_preferred() {
        let views = [view(
            "delivery",
            32,
            "delivery",
            u64::from(u32::MAX),
            u64::from(u32::MAX),
        )];
        let members = HashMap::from([("delivery".into(), 2)]);
        let plan = plan(&views, &members, &HashSet::new(), &prefer);
        let released: Vec<u16> = plan.release.iter().map(|p| p.partition).collect();
        assert_eq!(released, (16..32).rev().collect::<Vec<_>>());
        assert!(plan.claim.is_empty());
    }

    #[test]
    fn while_handing_on_it_neither_claims_nor_hands_on_again() {
        // Sixteen open, sixteen still draining: locked 32 > fair 16, open 16 = fair.
        let views = [view(
            "delivery",
            32,
            "delivery",
            0xFFFF,
            u64::from(u32::MAX),
        )];
        let members = HashMap::from([("delivery".into(), 2)]);
        let plan = plan(&views, &members, &keys(&views), &prefer);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_role_only_this_instance_wants_is_claimed_and_kept_beyond_the_fair_part() {
        let views = [
            view("projections", 1, "roles", 1, 1),
            view("audit_checkpoint", 1, "roles", 0, 0),
        ];
        let members = HashMap::from([
            ("roles".into(), 2),
            ("role.projections".into(), 2),
            ("role.audit_checkpoint".into(), 1),
        ]);
        let plan = plan(&views, &members, &keys(&views), &prefer);
        let claimed: Vec<&str> = plan.claim.iter().map(|p| p.role.as_str()).collect();
        assert_eq!(claimed, ["audit_checkpoint"]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn roles_held_whole_are_balanced_together_and_a_tool_takes_all_it_asks() {
        let views = [
            view("projections", 1, "roles", 0, 0),
            view("projections.analytics", 1, "roles", 0, 0),
            view("rebuild", 1, "roles", 0, 0),
        ];
        let members = HashMap::from([("roles".into(), 2)]);
        assert_eq!(
            plan(&views, &members, &keys(&views), &prefer).claim.len(),
            2
        );
        let tool = plan(&views, &HashMap::new(), &keys(&views), &prefer);
        assert_eq!(tool.claim.len(), 3);
    }
}
