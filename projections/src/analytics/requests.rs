//! `analytics.usage_daily` and `analytics.delivery_daily`, from the request streams.

use std::collections::HashMap;

use async_trait::async_trait;
use chronicle_aggregates::request::{RequestEvent, Spent};
use chrono::NaiveDate;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{big, day};
use crate::{FailurePolicy, ProjectionError, Projector, RecordedEvent};

/// The projector behind usage and delivery analytics.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestAnalytics;

/// Who, which model and which day a request counts toward.
type Key = (String, String, NaiveDate);

#[derive(Default)]
struct Usage {
    requests: u64,
    succeeded: u64,
    failed: u64,
    expired: u64,
    cancelled: u64,
    spent: Spent,
}

#[derive(Default)]
struct Deliveries {
    attempts: u64,
    succeeded_attempts: u64,
    delivered: u64,
    delivery_failed: u64,
    latency_ms: u64,
}

#[async_trait]
impl Projector for RequestAnalytics {
    fn name(&self) -> &'static str {
        "analytics_requests"
    }

    /// 2: cached prompt tokens, costs and unpriced results; Anthropic's cache reads and
    /// writes count as input tokens.
    fn version(&self) -> i32 {
        2
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::GO_ON
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Request"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &[
            "analytics.request_keys",
            "analytics.usage_daily",
            "analytics.delivery_daily",
        ]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let requests: Vec<(&RecordedEvent, RequestEvent)> = events
            .iter()
            .copied()
            .filter(|e| e.aggregate_type == "Request")
            .map(|e| e.decode().map(|decoded| (e, decoded)))
            .collect::<Result<_, _>>()?;
        if requests.is_empty() {
            return Ok(());
        }
        let mut keys: HashMap<String, Key> = HashMap::new();
        let mut new_keys = Vec::new();
        for (event, decoded) in &requests {
            if let RequestEvent::Submitted {
                spec, owner, at, ..
            } = decoded
            {
                let key = (owner.clone(), spec.model.clone(), day(*at));
                keys.insert(event.aggregate_id.clone(), key.clone());
                new_keys.push((event.aggregate_id.clone(), key));
            }
        }
        let missing: Vec<Uuid> = requests
            .iter()
            .filter(|(e, _)| !keys.contains_key(&e.aggregate_id))
            .filter_map(|(e, _)| e.aggregate_id.parse().ok())
            .collect();
        if !missing.is_empty() {
            let known: Vec<(Uuid, String, String, NaiveDate)> = sqlx::query_as(
                "SELECT request_id, owner, model, day FROM request_keys
                  WHERE request_id = ANY($1)",
            )
            .bind(&missing)
            .fetch_all(&mut *conn)
            .await?;
            for (id, owner, model, day) in known {
                keys.insert(id.to_string(), (owner, model, day));
            }
        }
        let mut usage: HashMap<Key, Usage> = HashMap::new();
        let mut deliveries: HashMap<(String, NaiveDate), Deliveries> = HashMap::new();
        for (event, decoded) in requests {
            let Some(key) = keys.get(&event.aggregate_id) else {
                continue;
            };
            let owner = key.0.clone();
            match decoded {
                RequestEvent::Submitted { .. } => {
                    usage.entry(key.clone()).or_default().requests += 1
                }
                RequestEvent::ResultRecorded { response, cost, .. } => {
                    let row = usage.entry(key.clone()).or_default();
                    row.succeeded += 1;
                    row.spent.add(&response, cost.as_ref());
                }
                RequestEvent::Failed { .. } => usage.entry(key.clone()).or_default().failed += 1,
                RequestEvent::Expired { .. } => usage.entry(key.clone()).or_default().expired += 1,
                RequestEvent::Cancelled { .. } => {
                    usage.entry(key.clone()).or_default().cancelled += 1;
                }
                RequestEvent::DeliveryAttempted { attempt, .. } => {
                    let row = deliveries
                        .entry((owner, day(attempt.started_at)))
                        .or_default();
                    row.attempts += 1;
                    row.succeeded_attempts += u64::from(attempt.succeeded());
                    row.latency_ms = row.latency_ms.saturating_add(attempt.duration_ms);
                }
                RequestEvent::Delivered { at } => {
                    deliveries.entry((owner, day(at))).or_default().delivered += 1;
                }
                RequestEvent::DeliveryFailed { at, .. } => {
                    deliveries
                        .entry((owner, day(at)))
                        .or_default()
                        .delivery_failed += 1;
                }
                RequestEvent::SentToProvider { .. }
                | RequestEvent::DeliveryStarted { .. }
                | RequestEvent::Consumed { .. }
                | RequestEvent::ConsumeFailed { .. } => {}
            }
        }
        insert_keys(conn, new_keys).await?;
        upsert_usage(conn, usage).await?;
        upsert_deliveries(conn, deliveries).await?;
        Ok(())
    }
}

async fn insert_keys(conn: &mut PgConnection, keys: Vec<(String, Key)>) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let (mut ids, mut owners, mut models, mut days) = (vec![], vec![], vec![], vec![]);
    for (id, (owner, model, day)) in keys {
        ids.push(id);
        owners.push(owner);
        models.push(model);
        days.push(day);
    }
    sqlx::query(
        "INSERT INTO request_keys (request_id, owner, model, day)
         SELECT id::uuid, owner, model, day
           FROM UNNEST($1::text[], $2::text[], $3::text[], $4::date[]) AS k(id, owner, model, day)",
    )
    .bind(ids)
    .bind(owners)
    .bind(models)
    .bind(days)
    .execute(conn)
    .await?;
    Ok(())
}

async fn upsert_usage(
    conn: &mut PgConnection,
    rows: HashMap<Key, Usage>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<String>, Vec<String>, Vec<NaiveDate>) = Default::default();
    let mut counts: [Vec<i64>; 10] = Default::default();
    for ((owner, model, day), usage) in rows {
        columns.0.push(owner);
        columns.1.push(model);
        columns.2.push(day);
        for (column, value) in counts.iter_mut().zip([
            big(usage.requests),
            big(usage.succeeded),
            big(usage.failed),
            big(usage.expired),
            big(usage.cancelled),
            big(usage.spent.input),
            big(usage.spent.cached_input),
            big(usage.spent.output),
            usage.spent.nano_usd,
            big(usage.spent.unpriced),
        ]) {
            column.push(value);
        }
    }
    let mut query = sqlx::query(
        "INSERT INTO usage_daily AS u (owner, model, day, requests, succeeded, failed, expired,
                                       cancelled, input_tokens, cached_input_tokens,
                                       output_tokens, cost_nano_usd, unpriced)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::date[], $4::bigint[], $5::bigint[],
                              $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[],
                              $10::bigint[], $11::bigint[], $12::bigint[], $13::bigint[])
         ON CONFLICT (owner, model, day) DO UPDATE SET
             requests = u.requests + excluded.requests,
             succeeded = u.succeeded + excluded.succeeded,
             failed = u.failed + excluded.failed,
             expired = u.expired + excluded.expired,
             cancelled = u.cancelled + excluded.cancelled,
             input_tokens = u.input_tokens + excluded.input_tokens,
             cached_input_tokens = u.cached_input_tokens + excluded.cached_input_tokens,
             output_tokens = u.output_tokens + excluded.output_tokens,
             cost_nano_usd = u.cost_nano_usd + excluded.cost_nano_usd,
             unpriced = u.unpriced + excluded.unpriced",
    )
    .bind(columns.0)
    .bind(columns.1)
    .bind(columns.2);
    for column in counts {
        query = query.bind(column);
    }
    query.execute(conn).await?;
    Ok(())
}

async fn upsert_deliveries(
    conn: &mut PgConnection,
    rows: HashMap<(String, NaiveDate), Deliveries>,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut columns: (Vec<String>, Vec<NaiveDate>) = Default::default();
    let mut counts: [Vec<i64>; 5] = Default::default();
    for ((owner, day), row) in rows {
        columns.0.push(owner);
        columns.1.push(day);
        for (column, value) in counts.iter_mut().zip([
            row.attempts,
            row.succeeded_attempts,
            row.delivered,
            row.delivery_failed,
            row.latency_ms,
        ]) {
            column.push(big(value));
        }
    }
    let [attempts, succeeded, delivered, failed, latency] = counts;
    sqlx::query(
        "INSERT INTO delivery_daily AS d (owner, day, attempts, succeeded_attempts,
                                                    delivered, delivery_failed, latency_ms_total)
         SELECT * FROM UNNEST($1::text[], $2::date[], $3::bigint[], $4::bigint[], $5::bigint[],
                              $6::bigint[], $7::bigint[])
         ON CONFLICT (owner, day) DO UPDATE SET
             attempts = d.attempts + excluded.attempts,
             succeeded_attempts = d.succeeded_attempts + excluded.succeeded_attempts,
             delivered = d.delivered + excluded.delivered,
             delivery_failed = d.delivery_failed + excluded.delivery_failed,
             latency_ms_total = d.latency_ms_total + excluded.latency_ms_total",
    )
    .bind(columns.0)
    .bind(columns.1)
    .bind(attempts)
    .bind(succeeded)
    .bind(delivered)
    .bind(failed)
    .bind(latency)
    .execute(conn)
    .await?;
    Ok(())
}
