//! Prometheus metrics at `/metrics`: counters and histograms recorded where things happen
//! (commands, provider, webhook, broker and AI calls, subscriptions), and gauges read from
//! the database when scraped (projection lag, queue depths, events appended).

use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use chronicle_projections::checkpoint::State;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;

/// Histogram buckets for call and command latencies, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls return the same handle). Every
/// series carries the label `instance`: this instance's name, as in `pg_stat_activity`.
pub fn install(instance: &str) -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BUCKETS)
                .ok()?
                .add_global_label("instance", instance)
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

/// Records a command on `aggregate` with its `outcome` and latency.
pub fn command(aggregate: &'static str, outcome: &'static str, took: Duration) {
    metrics::counter!("chronicle_commands_total", "aggregate" => aggregate, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("chronicle_command_seconds", "aggregate" => aggregate)
        .record(took.as_secs_f64());
}

/// Records `count` events of `aggregate_type` committed to the log (by the group committer,
/// which every append goes through, so the counter matches the store).
pub fn events_appended(aggregate_type: &str, count: usize) {
    metrics::counter!("chronicle_events_appended_total", "aggregate" => aggregate_type.to_owned())
        .increment(count as u64);
}

/// Records a GraphQL mutation field by `name` and `outcome` (`ok` or its error's code).
pub fn mutation(name: &str, outcome: &str) {
    metrics::counter!("chronicle_mutations_total", "mutation" => name.to_owned(),
                      "outcome" => outcome.to_owned())
    .increment(1);
}

/// Records `count` requests submitted by `client` to `model`. Both labels are bounded: past
/// [`MAX_LABEL_VALUES`] distinct values of one, new ones are counted as `other`.
pub fn requests_submitted(client: &str, model: &str, count: usize) {
    let client = CLIENTS.bounded(client);
    let model = MODELS.bounded(model);
    metrics::counter!("chronicle_requests_submitted_total", "client" => client, "model" => model)
        .increment(count as u64);
}

/// Records the `input` and `output` tokens of results recorded for `client`'s requests to
/// `model` (labels bounded as [`requests_submitted`]'s).
pub fn tokens_used(client: &str, model: &str, input: u64, output: u64) {
    let client = CLIENTS.bounded(client);
    let model = MODELS.bounded(model);
    for (kind, count) in [("input", input), ("output", output)] {
        metrics::counter!("chronicle_tokens_total", "client" => client.clone(),
                          "model" => model.clone(), "kind" => kind)
        .increment(count);
    }
}

/// Records what the results recorded for `client`'s requests to `model` cost, in billionths
/// of a US dollar, and how many had no price (labels bounded as [`requests_submitted`]'s).
pub fn cost(client: &str, model: &str, nano_usd: i64, unpriced: u64) {
    let client = CLIENTS.bounded(client);
    let model = MODELS.bounded(model);
    metrics::counter!("chronicle_cost_nanodollars_total", "client" => client.clone(),
                      "model" => model.clone())
    .increment(u64::try_from(nano_usd).unwrap_or_default());
    metrics::counter!("chronicle_unpriced_results_total", "client" => client, "model" => model)
        .increment(unpriced);
}

/// Records how many instances are live on the database (rate limits are split among them).
pub fn instances_live(count: usize) {
    metrics::gauge!("chronicle_instances_live").set(count as f64);
}

/// Records how many partitions of `role` this instance holds now (a role held whole has
/// one).
pub fn role_held(role: &str, partitions: u32) {
    metrics::gauge!("chronicle_role_held", "role" => role.to_owned()).set(f64::from(partitions));
}

/// Records how many partitions `role` has (1 for a role held whole).
pub fn role_partitions(role: &str, partitions: u16) {
    metrics::gauge!("chronicle_role_partitions", "role" => role.to_owned())
        .set(f64::from(partitions));
}

/// Counts a query routed while a read replica is configured: `served` by it, or served by
/// the primary because it was `lagging` behind the query's position or `unreachable`.
pub fn replica_query(outcome: &'static str) {
    metrics::counter!("chronicle_replica_queries_total", "outcome" => outcome).increment(1);
}

/// How many log positions the read replica is behind this instance's live log.
pub fn replica_lag(positions: i64) {
    metrics::gauge!("chronicle_replica_lag_events").set(positions as f64);
}

/// Whether the read replica answered its last health check.
pub fn replica_up(up: bool) {
    metrics::gauge!("chronicle_replica_up").set(f64::from(u8::from(up)));
}

/// Counts a catch-up page a subscription read from `source` (`replica` or `primary`).
pub fn catch_up_read(source: &'static str) {
    metrics::counter!("chronicle_catch_up_reads_total", "source" => source).increment(1);
}

/// Distinct values a caller-chosen label (a client, a model) takes before the rest are
/// counted as `other`: Prometheus keeps a series per value.
pub const MAX_LABEL_VALUES: usize = 100;

/// The values one label has taken.
struct LabelValues(std::sync::Mutex<std::collections::HashSet<String>>);

static CLIENTS: LazyLock<LabelValues> = LazyLock::new(LabelValues::new);
static MODELS: LazyLock<LabelValues> = LazyLock::new(LabelValues::new);

impl LabelValues {
    fn new() -> Self {
        Self(std::sync::Mutex::default())
    }

    /// `value`, or `other` once the label has [`MAX_LABEL_VALUES`] others.
    fn bounded(&self, value: &str) -> String {
        let mut seen = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains(value) {
            return value.to_owned();
        }
        if seen.len() < MAX_LABEL_VALUES {
            seen.insert(value.to_owned());
            return value.to_owned();
        }
        "other".to_owned()
    }
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
    let Some(handle) = HANDLE.get().and_then(Option::as_ref) else {
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
            .set(f64::from(u8::from(status.state() == State::Halted)));
        let progress = status.rebuild_progress().unwrap_or(1.0);
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
    let pool_size = f64::from(pool.size());
    let idle = pool.num_idle() as f64;
    metrics::gauge!("chronicle_db_pool_connections", "state" => "used").set(pool_size - idle);
    metrics::gauge!("chronicle_db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("chronicle_db_pool_max_connections")
        .set(f64::from(pool.options().get_max_connections()));
    let head: Option<i64> = sqlx::query_scalar("SELECT max(log_position) FROM events")
        .fetch_one(pool)
        .await?;
    metrics::gauge!("chronicle_log_head_position").set(head.unwrap_or_default() as f64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_takes_a_bounded_number_of_values_and_counts_the_rest_as_other() {
        let label = LabelValues::new();
        for n in 0..MAX_LABEL_VALUES {
            assert_eq!(label.bounded(&format!("client-{n}")), format!("client-{n}"));
        }
        assert_eq!(label.bounded("one-too-many"), "other");
        assert_eq!(label.bounded("client-7"), "client-7");
    }
}
