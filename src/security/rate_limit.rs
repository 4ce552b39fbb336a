//! Per-client rate limits on mutations: token buckets per client (governor's GCRA), one for
//! mutation fields and one for the items of bulk mutations. The limits are the deployment's:
//! each of N live instances enforces 1/N of them (rounded up), so a client spreading its
//! calls over every instance gets about the configured rate, not N times it.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use tokio_util::sync::CancellationToken;

use crate::projection::InstanceCount;

/// The largest bulk submission: a bucket of items always holds at least this many, so one
/// whole bulk passes a rested client.
const LARGEST_BULK: u32 = 50_000;

/// What one document charges: each root mutation field, and each item of their list
/// arguments (a bulk submission's requests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MutationCost {
    /// Root mutation fields.
    pub mutations: u64,
    /// Items of their list arguments.
    pub items: u64,
}

impl MutationCost {
    /// Both costs together.
    #[must_use]
    pub fn plus(self, other: Self) -> Self {
        Self {
            mutations: self.mutations.saturating_add(other.mutations),
            items: self.items.saturating_add(other.items),
        }
    }
}

/// Mutations and bulk items each client may send; off when built with a rate of 0.
#[derive(Clone, Default)]
pub struct RateLimiter {
    limits: Option<RateLimits>,
    shared: Arc<RwLock<Share>>,
    /// Where to ask for the live instances to be counted again, and when it was last asked.
    recount: Arc<Mutex<Option<InstanceCount>>>,
    counted_at: Arc<Mutex<Option<Instant>>>,
}

/// How often a limiter in use has the live instances counted (an idle one never does).
const RECOUNT_EVERY: Duration = Duration::from_secs(5);

/// This instance's share of the limits: among how many instances, and its buckets.
#[derive(Default)]
struct Share {
    instances: usize,
    buckets: Option<Arc<Buckets>>,
}

struct Buckets {
    mutations: DefaultKeyedRateLimiter<String>,
    items: DefaultKeyedRateLimiter<String>,
}

/// The limits' settings.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    /// Mutation fields per second on average (0: no limits at all).
    pub per_second: u32,
    /// Mutation fields at once after being idle.
    pub burst: u32,
    /// Bulk items per second on average; a burst holds the largest bulk or a second's worth.
    pub items_per_second: u32,
}

impl RateLimiter {
    /// The limits `limits` describes, enforced whole until [`RateLimiter::split`].
    pub fn new(limits: RateLimits) -> Self {
        let limiter = Self {
            limits: (limits.per_second > 0).then_some(limits),
            shared: Arc::default(),
            recount: Arc::default(),
            counted_at: Arc::default(),
        };
        limiter.split(1);
        limiter
    }

    /// Enforces 1/`instances` of the limits from now on (buckets start full again when the
    /// count changes).
    pub fn split(&self, instances: usize) {
        let instances = instances.max(1);
        let mut share = self.shared.write().unwrap_or_else(PoisonError::into_inner);
        if share.instances == instances {
            return;
        }
        share.instances = instances;
        share.buckets = self
            .limits
            .map(|limits| Arc::new(Buckets::sharing(limits, instances)));
    }

    /// Splits the limits as the live instance count changes, until `shutdown`; while the
    /// limiter is in use it has the instances counted again every 5 s.
    pub fn follow(&self, instances: InstanceCount, shutdown: CancellationToken) {
        let limiter = self.clone();
        let InstanceCount { mut live, .. } = instances.clone();
        if let Ok(mut recount) = self.recount.lock() {
            *recount = Some(instances);
        }
        tokio::spawn(async move {
            loop {
                let count = *live.borrow_and_update();
                limiter.split(count);
                tokio::select! {
                    changed = live.changed() => if changed.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Asks for a recount when the last is older than `RECOUNT_EVERY`.
    fn recount_if_due(&self) {
        if self.limits.is_none() {
            return;
        }
        let Ok(mut last) = self.counted_at.lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < RECOUNT_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        if let Ok(recount) = self.recount.lock() {
            if let Some(instances) = recount.as_ref() {
                instances.recount();
            }
        }
    }

    /// Takes `cost` from `client`'s buckets.
    ///
    /// # Errors
    /// The wait after which the buckets hold enough (a whole burst's refill when `cost` is
    /// more than a burst).
    pub fn check(&self, client: &str, cost: MutationCost) -> Result<(), Duration> {
        self.recount_if_due();
        let buckets = self
            .shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .buckets
            .clone();
        let Some(buckets) = buckets else {
            return Ok(());
        };
        let client = client.to_owned();
        take(&buckets.items, &client, cost.items)?;
        take(&buckets.mutations, &client, cost.mutations)
    }
}

impl Buckets {
    /// One instance's buckets when `instances` share `limits`: each rate and burst divided,
    /// rounded up. The item burst still holds one largest bulk.
    fn sharing(limits: RateLimits, instances: usize) -> Self {
        let instances = u32::try_from(instances).unwrap_or(u32::MAX).max(1);
        let share = |value: u32| value.div_ceil(instances).max(1);
        let rate = NonZeroU32::new(share(limits.per_second)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(share(limits.burst.max(limits.per_second))).unwrap_or(rate);
        let item_rate = match limits.items_per_second {
            0 => NonZeroU32::MAX,
            items => NonZeroU32::new(share(items)).unwrap_or(NonZeroU32::MIN),
        };
        let item_burst = NonZeroU32::new(share(limits.items_per_second).max(LARGEST_BULK))
            .unwrap_or(NonZeroU32::MAX);
        Self {
            mutations: DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            items: DefaultKeyedRateLimiter::keyed(
                Quota::per_second(item_rate).allow_burst(item_burst),
            ),
        }
    }
}

fn take(
    bucket: &DefaultKeyedRateLimiter<String>,
    client: &String,
    cost: u64,
) -> Result<(), Duration> {
    let Some(cost) = u32::try_from(cost).ok().and_then(NonZeroU32::new) else {
        return if cost == 0 {
            Ok(())
        } else {
            Err(Duration::from_secs(1))
        };
    };
    match bucket.check_key_n(client, cost) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
        Err(_) => Err(Duration::from_secs(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32, items_per_second: u32) -> RateLimiter {
        RateLimiter::new(RateLimits {
            per_second,
            burst,
            items_per_second,
        })
    }

    fn mutations(count: u64) -> MutationCost {
        MutationCost {
            mutations: count,
            items: 0,
        }
    }

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_unaffected() {
        let limiter = limiter(1, 3, 1_000);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", mutations(1)), Ok(()));
        }
        let wait = limiter
            .check("a", mutations(1))
            .expect_err("over the burst");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limiter.check("b", mutations(3)), Ok(()));
        assert!(
            limiter.check("b", mutations(4)).is_err(),
            "more than a burst at once"
        );
    }

    #[test]
    fn bulk_items_are_charged_per_item_and_one_largest_bulk_passes_a_rested_client() {
        let limiter = limiter(10, 10, 1_000);
        let bulk = MutationCost {
            mutations: 1,
            items: u64::from(LARGEST_BULK),
        };
        assert_eq!(limiter.check("a", bulk), Ok(()));
        assert!(
            limiter.check("a", bulk).is_err(),
            "the item bucket is empty"
        );
        assert_eq!(
            limiter.check("a", mutations(1)),
            Ok(()),
            "single mutations go on"
        );
    }

    #[test]
    fn instances_share_the_limits_each_enforcing_its_part_rounded_up() {
        let limiter = limiter(10, 30, 1_000);
        limiter.split(3);
        let passed = (0..40)
            .filter(|_| limiter.check("a", mutations(1)).is_ok())
            .count();
        assert_eq!(passed, 10, "a third of a burst of 30");
        limiter.split(4);
        let passed = (0..40)
            .filter(|_| limiter.check("a", mutations(1)).is_ok())
            .count();
        assert_eq!(passed, 8, "a quarter of 30, rounded up");
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limiter = limiter(0, 0, 0);
        let huge = MutationCost {
            mutations: 1_000_000,
            items: 1_000_000,
        };
        assert_eq!(limiter.check("a", huge), Ok(()));
    }
}
