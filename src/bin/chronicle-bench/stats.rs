//! Latency samples and rates.

use std::time::Duration;

/// Latencies of one kind of call, in the order they were taken.
#[derive(Debug, Default, Clone)]
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    /// Records one latency.
    pub(crate) fn push(&mut self, took: Duration) {
        self.0.push(took);
    }

    /// Adds another set's samples.
    pub(crate) fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// How many samples.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th quantile (0.0–1.0) in milliseconds, nearest rank; 0 without samples.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_unstable();
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = (p * sorted.len() as f64).ceil() as usize;
        let index = rank.clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1000.0
    }
}

/// `count` per second over `took`.
pub(crate) fn rate(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(f64::EPSILON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut latencies = Latencies::default();
        for ms in (1..=100).rev() {
            latencies.push(Duration::from_millis(ms));
        }
        assert_eq!(latencies.percentile_ms(0.5), 50.0);
        assert_eq!(latencies.percentile_ms(0.99), 99.0);
        assert_eq!(latencies.percentile_ms(1.0), 100.0);
        assert_eq!(Latencies::default().percentile_ms(0.99), 0.0);
    }

    #[test]
    fn rate_is_per_second() {
        assert_eq!(rate(500, Duration::from_millis(250)), 2000.0);
    }
}
