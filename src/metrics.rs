//! Prometheus metrics at `/metrics`: counters and histograms recorded where things happen
//! (commands, provider, webhook, broker and AI calls, subscriptions), and gauges read from
//! the database when scraped (projection lag, queue depths, events appended).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Histogram buckets for call and command latencies, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Records a call to something outside: `system` (provider, webhook, rabbitmq, chat, dicomweb),
/// its `outcome`, and how long it took.
pub fn call(system: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("chronicle_calls_total", "system" => system, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("chronicle_call_seconds", "system" => system).record(took.as_secs_f64());
}

/// Records a command on `aggregate` with its `outcome`, latency and events appended.
pub fn command(aggregate: &'static str, outcome: &'static str, took: Duration, events: usize) {
    metrics::counter!("chronicle_commands_total", "aggregate" => aggregate, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("chronicle_command_seconds", "aggregate" => aggregate)
        .record(took.as_secs_f64());
    metrics::counter!("chronicle_events_appended_total", "aggregate" => aggregate)
        .increment(events as u64);
}

/// Records one group commit of `appends` commands' appends (their mean is the ratio of the
/// two counters).
pub fn group_commit(appends: usize) {
    metrics::counter!("chronicle_group_commits_total").increment(1);
    metrics::counter!("chronicle_group_commit_appends_total").increment(appends as u64);
}

/// Counts an open subscription until dropped.
pub struct SubscriptionGuard;

impl SubscriptionGuard {
    /// One more open subscription.
    pub fn open() -> Self {
        metrics::gauge!("chronicle_subscriptions").increment(1.0);
        Self
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        metrics::gauge!("chronicle_subscriptions").decrement(1.0);
    }
}

/// The exposition text, after refreshing the gauges the database knows.
pub async fn render(pool: &PgPool) -> String {
    let Some(handle) = install() else {
        return String::new();
    };
    if let Err(error) = refresh(pool).await {
        tracing::warn!(%error, "metrics: cannot read gauges from the database");
    }
    handle.render()
}

async fn refresh(pool: &PgPool) -> Result<(), sqlx::Error> {
    let projectors = crate::projection::standard();
    for status in chronicle_projections::checkpoint::status(pool, &projectors).await? {
        let name = status.name.clone();
        metrics::gauge!("chronicle_projection_lag_events", "projection" => name.clone())
            .set(status.lag as f64);
        metrics::gauge!("chronicle_projection_lag_seconds", "projection" => name.clone())
            .set(status.lag_seconds);
        metrics::gauge!("chronicle_projection_parked_events", "projection" => name.clone())
            .set(status.parked as f64);
        metrics::gauge!("chronicle_projection_halted", "projection" => name.clone())
            .set(f64::from(u8::from(status.halted_at.is_some())));
        let progress = status.rebuild_target.map_or(1.0, |target| {
            (status.cursor.position as f64 / target.max(1) as f64).min(1.0)
        });
        metrics::gauge!("chronicle_projection_rebuild_progress", "projection" => name)
            .set(progress);
        metrics::gauge!("chronicle_projection_applied_events", "projection" => status.name)
            .set(status.events_applied as f64);
    }
    let depths: Vec<(String, i64)> = sqlx::query_as(
        "SELECT 'deliveries_due', count(*) FROM requests
          WHERE status = 'delivering' AND (next_attempt_at IS NULL OR next_attempt_at <= now())
         UNION ALL
         SELECT 'batches_at_provider', count(*) FROM batches
          WHERE status IN ('uploading', 'uploaded', 'provider_processing', 'provider_completed',
                           'downloading')
         UNION ALL
         SELECT 'ai_calls_pending', count(*) FROM simulations WHERE pending_call_id IS NOT NULL
         UNION ALL
         SELECT 'transfer_tasks_pending', count(*) FROM transfer_tasks t
           JOIN transfer_jobs j ON j.id = t.job_id
          WHERE t.status = 'pending' AND j.status IN ('pending', 'in_progress')",
    )
    .fetch_all(pool)
    .await?;
    for (queue, depth) in depths {
        metrics::gauge!("chronicle_queue_depth", "queue" => queue).set(depth as f64);
    }
    let head: Option<i64> = sqlx::query_scalar("SELECT max(log_position) FROM events")
        .fetch_one(pool)
        .await?;
    metrics::gauge!("chronicle_log_head_position").set(head.unwrap_or_default() as f64);
    Ok(())
}
