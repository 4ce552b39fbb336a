//! Analytics over GraphQL: the caller's rows of the `analytics` projection tables (an
//! admin's: every owner's).

use async_graphql::{Context, Object, SimpleObject};
use chrono::NaiveDate;

use super::{ApiError, Caller};
use crate::reads::Reads;

/// Longest range one query covers.
const MAX_DAYS: i64 = 366;

/// Requests of one model on one day (of submission).
#[derive(SimpleObject, sqlx::FromRow)]
pub(crate) struct UsageDay {
    /// Whose rows these are (an admin sees every owner's).
    owner: String,
    model: String,
    day: NaiveDate,
    requests: i64,
    succeeded: i64,
    failed: i64,
    expired: i64,
    cancelled: i64,
    /// Prompt tokens (Anthropic's cache reads and writes included).
    input_tokens: i64,
    /// Prompt tokens read from the provider's prompt cache (part of `inputTokens`).
    cached_input_tokens: i64,
    output_tokens: i64,
    /// What the results cost in US dollars, each priced by the price table when recorded.
    cost_usd: f64,
    /// Results no price applied to: their cost is not in `costUsd`.
    unpriced: i64,
}

/// Batch turnaround of one model on one day (of opening), in seconds from submission to the
/// provider.
#[derive(SimpleObject, sqlx::FromRow)]
pub(crate) struct TurnaroundDay {
    /// Whose rows these are (an admin sees every owner's).
    owner: String,
    model: String,
    day: NaiveDate,
    batches: i64,
    provider_p50_seconds: Option<f64>,
    provider_p95_seconds: Option<f64>,
    done_p50_seconds: Option<f64>,
    done_p95_seconds: Option<f64>,
}

/// Delivery attempts on one day.
#[derive(SimpleObject, sqlx::FromRow)]
pub(crate) struct DeliveryDay {
    /// Whose rows these are (an admin sees every owner's).
    owner: String,
    day: NaiveDate,
    attempts: i64,
    succeeded_attempts: i64,
    /// Succeeded attempts / attempts.
    success_rate: f64,
    /// Rounds that ended delivered.
    delivered: i64,
    /// Rounds that gave up.
    delivery_failed: i64,
    average_latency_ms: f64,
}

/// Transfers between two servers on one day (a task's end).
#[derive(SimpleObject, sqlx::FromRow)]
pub(crate) struct TransferDay {
    /// Whose rows these are (an admin sees every owner's).
    owner: String,
    source: String,
    destination: String,
    day: NaiveDate,
    /// Studies moved (tasks that ended success or warning).
    studies: i64,
    /// Instances those stored.
    instances: i64,
    /// Tasks that failed.
    failures: i64,
    /// Tasks canceled.
    canceled: i64,
}

/// Simulation activity on one day (of creation).
#[derive(SimpleObject, sqlx::FromRow)]
pub(crate) struct SimulationDay {
    /// Whose rows these are (an admin sees every owner's).
    owner: String,
    day: NaiveDate,
    sessions: i64,
    messages: i64,
    ai_calls: i64,
    failed_calls: i64,
    tokens: i64,
    feedbacks: i64,
    /// Mean rubric score (0–5), when any were given.
    average_score: Option<f64>,
}

/// Analytics queries, scoped to the caller.
#[derive(Default)]
pub(crate) struct AnalyticsQuery;

/// The caller's rows of `sql` (parameters: owner, from, to) for the checked range.
async fn rows<T>(
    ctx: &Context<'_>,
    from: NaiveDate,
    to: NaiveDate,
    sql: &'static str,
) -> Result<Vec<T>, ApiError>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let caller = Caller::from_ctx(ctx)?;
    let days = (to - from).num_days();
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(ApiError::Validation(format!(
            "`to` must be 1 to {MAX_DAYS} days after `from`"
        )));
    }
    Ok(sqlx::query_as(sql)
        .bind(caller.scope())
        .bind(from)
        .bind(to)
        .fetch_all(&ctx.data_unchecked::<Reads>().pool)
        .await?)
}

#[Object]
impl AnalyticsQuery {
    /// Your requests per model and day of submission in `[from, to)`, with outcomes, tokens
    /// and cost. Errors: `VALIDATION` (range).
    async fn usage(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<UsageDay>, ApiError> {
        rows(
            ctx,
            from,
            to,
            "SELECT owner, model, day, requests, succeeded, failed, expired, cancelled, input_tokens,
                    cached_input_tokens, output_tokens, (cost_nano_usd / 1e9)::float8 AS cost_usd,
                    unpriced
               FROM analytics.usage_daily
              WHERE ($1::text IS NULL OR owner = $1) AND day >= $2 AND day < $3 ORDER BY day, owner, model",
        )
        .await
    }

    /// Your batches' turnaround per model and day in `[from, to)`: p50/p95 seconds from
    /// submission to provider completion and to done. Errors: `VALIDATION` (range).
    async fn batch_turnaround(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TurnaroundDay>, ApiError> {
        rows(
            ctx,
            from,
            to,
            "SELECT owner, model, day, batches, provider_p50_seconds, provider_p95_seconds,
                    done_p50_seconds, done_p95_seconds
               FROM analytics.batch_turnaround_daily
              WHERE ($1::text IS NULL OR owner = $1) AND day >= $2 AND day < $3 ORDER BY day, owner, model",
        )
        .await
    }

    /// Your delivery attempts per day in `[from, to)`. Errors: `VALIDATION` (range).
    async fn delivery_outcomes(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DeliveryDay>, ApiError> {
        rows(
            ctx,
            from,
            to,
            "SELECT owner, day, attempts, succeeded_attempts,
                    succeeded_attempts::float8 / greatest(attempts, 1) AS success_rate,
                    delivered, delivery_failed,
                    latency_ms_total::float8 / greatest(attempts, 1) AS average_latency_ms
               FROM analytics.delivery_daily
              WHERE ($1::text IS NULL OR owner = $1) AND day >= $2 AND day < $3 ORDER BY day, owner",
        )
        .await
    }

    /// Your simulations' activity per day of creation in `[from, to)`.
    /// Errors: `VALIDATION` (range).
    async fn simulation_activity(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<SimulationDay>, ApiError> {
        rows(
            ctx,
            from,
            to,
            "SELECT owner, day, sessions, messages, ai_calls, failed_calls, tokens, feedbacks,
                    CASE WHEN scores > 0 THEN score_total::float8 / scores END AS average_score
               FROM analytics.simulation_daily
              WHERE ($1::text IS NULL OR owner = $1) AND day >= $2 AND day < $3 ORDER BY day, owner",
        )
        .await
    }

    /// Your transfers per server pair and day a task ended, in `[from, to)`.
    /// Errors: `VALIDATION` (range).
    async fn transfer_throughput(
        &self,
        ctx: &Context<'_>,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<TransferDay>, ApiError> {
        rows(
            ctx,
            from,
            to,
            "SELECT owner, source, destination, day, studies, instances, failures, canceled
               FROM analytics.transfer_daily
              WHERE ($1::text IS NULL OR owner = $1) AND day >= $2 AND day < $3 ORDER BY day, owner, source, destination",
        )
        .await
    }
}
