//! How much each workload does: the sizes for a full run, smaller ones for `--quick`,
//! both multiplied by `--scale`.

use std::time::Duration;

use anyhow::ensure;
use serde::Serialize;

/// The sizes of one run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Sizes {
    /// W1: sequential `submitRequest` calls.
    pub(crate) sequential_commands: usize,
    /// W2 and its limit: how long 16 clients run.
    pub(crate) concurrent_duration: Duration,
    /// W2: concurrent clients (and limit connections).
    pub(crate) concurrent_clients: usize,
    /// W3: commands on one aggregate.
    pub(crate) stream_commands: usize,
    /// W3: the first and last window compared.
    pub(crate) stream_window: usize,
    /// W4: `submitRequests` calls.
    pub(crate) bulk_calls: usize,
    /// W4: requests per call.
    pub(crate) bulk_items: usize,
    /// W5: events the rebuilt projections read, the first time.
    pub(crate) rebuild_events_small: usize,
    /// W5: events they read the second time, the log grown tenfold.
    pub(crate) rebuild_events: usize,
    /// W6: commands per second.
    pub(crate) live_rate: u32,
    /// W6: how long.
    pub(crate) live_duration: Duration,
    /// W7: concurrent query clients.
    pub(crate) query_clients: usize,
    /// W7: how long.
    pub(crate) query_duration: Duration,
    /// W0: how long the idle service is watched.
    pub(crate) idle_duration: Duration,
}

impl Sizes {
    /// The sizes for a full or quick run, scaled.
    ///
    /// # Errors
    /// A scale that is not a positive number.
    pub(crate) fn new(quick: bool, scale: f64) -> anyhow::Result<Self> {
        ensure!(
            scale.is_finite() && scale > 0.0 && scale <= 10.0,
            "--scale must be above 0 and at most 10"
        );
        let count = |full: usize, quick_size: usize| {
            let base = if quick { quick_size } else { full };
            ((base as f64 * scale).round() as usize).max(1)
        };
        let seconds = |full: u64, quick_size: u64| {
            let base = if quick { quick_size } else { full };
            Duration::from_secs_f64((base as f64 * scale).max(1.0))
        };
        let stream_commands = count(5_000, 1_500).max(3);
        Ok(Self {
            sequential_commands: count(2_000, 500),
            concurrent_duration: seconds(20, 5),
            concurrent_clients: 16,
            stream_commands,
            stream_window: 500.min(stream_commands / 3),
            bulk_calls: count(50, 10),
            bulk_items: 1_000,
            rebuild_events_small: count(200_000, 20_000),
            rebuild_events: count(2_000_000, 200_000),
            live_rate: 500,
            live_duration: seconds(20, 5),
            query_clients: 16,
            query_duration: seconds(10, 3),
            idle_duration: seconds(10, 10),
        })
    }
}
