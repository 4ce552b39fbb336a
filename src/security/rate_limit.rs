//! Per-client rate limits on mutations: a token bucket per client (governor's GCRA).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Mutations each client may send; off when built with a rate of 0.
#[derive(Clone, Default)]
pub struct RateLimiter {
    buckets: Option<Arc<DefaultKeyedRateLimiter<String>>>,
}

impl RateLimiter {
    /// `per_second` on average, `burst` at once (at least one second's worth).
    pub fn new(per_second: u32, burst: u32) -> Self {
        let buckets = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            Arc::new(DefaultKeyedRateLimiter::keyed(
                Quota::per_second(rate).allow_burst(burst),
            ))
        });
        Self { buckets }
    }

    /// Takes `cost` mutations from `client`'s bucket.
    ///
    /// # Errors
    /// The wait after which the bucket holds enough (a whole burst's refill when `cost` is more
    /// than the burst).
    pub fn check(&self, client: &str, cost: u32) -> Result<(), Duration> {
        let (Some(buckets), Some(cost)) = (&self.buckets, NonZeroU32::new(cost)) else {
            return Ok(());
        };
        match buckets.check_key_n(&client.to_owned(), cost) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(DefaultClock::default().now())),
            Err(_) => Err(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_waits_and_others_are_unaffected() {
        let limiter = RateLimiter::new(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", 1), Ok(()));
        }
        let wait = limiter.check("a", 1).expect_err("over the burst");
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert_eq!(limiter.check("b", 3), Ok(()));
        assert!(limiter.check("b", 4).is_err(), "more than a burst at once");
    }

    #[test]
    fn a_rate_of_zero_is_no_limit() {
        let limiter = RateLimiter::new(0, 0);
        assert_eq!(limiter.check("a", 1_000_000), Ok(()));
    }
}
