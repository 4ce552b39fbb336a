//! `requests`: one row per request with what list views filter on, from the request streams.

use async_trait::async_trait;
use std::collections::BTreeMap;

use chronicle_aggregates::request::{Cost, RequestEvent, RequestStatus};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;

use crate::listing::Listing;
use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the `requests` table.
#[derive(Debug, Default, Clone, Copy)]
pub struct Requests;

/// New rows, inserted together before any later event of the page touches them.
#[derive(Default)]
struct NewRows {
    ids: Vec<String>,
    owners: Vec<String>,
    batches: Vec<String>,
    custom_ids: Vec<String>,
    endpoints: Vec<String>,
    models: Vec<String>,
    deliveries: Vec<Value>,
    targets: Vec<Option<String>>,
    bodies: Vec<Value>,
    versions: Vec<i64>,
    times: Vec<DateTime<Utc>>,
}

impl NewRows {
    async fn flush(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(self);
        sqlx::query(
            "INSERT INTO requests (id, owner, batch_id, custom_id, endpoint, model, status,
                                   delivery, delivery_target, body, version, created_at,
                                   updated_at)
             SELECT id::uuid, owner, batch::uuid, custom_id, endpoint, model, 'pending',
                    delivery, target, body, version, at, at
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::text[], $7::jsonb[], $8::text[], $9::jsonb[], $10::bigint[],
                           $11::timestamptz[])
                    AS t(id, owner, batch, custom_id, endpoint, model, delivery, target, body,
                         version, at)",
        )
        .bind(rows.ids)
        .bind(rows.owners)
        .bind(rows.batches)
        .bind(rows.custom_ids)
        .bind(rows.endpoints)
        .bind(rows.models)
        .bind(rows.deliveries)
        .bind(rows.targets)
        .bind(rows.bodies)
        .bind(rows.versions)
        .bind(rows.times)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Projector for Requests {
    fn name(&self) -> &'static str {
        "requests"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Request"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["requests", "batch_request_counts"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        // New rows first, then one update per request with its latest state: in log order a
        // request's changes all follow its submission, so this equals applying one by one.
        // A submission records no change: its row is inserted in its first state, so a
        // request only submitted in this page needs no update.
        let mut new_rows = NewRows::default();
        let mut changes: BTreeMap<&str, Change> = BTreeMap::new();
        for event in events.iter().filter(|e| e.aggregate_type == "Request") {
            let decoded: RequestEvent = event.decode()?;
            let change = changes.entry(&event.aggregate_id).or_default();
            match decoded {
                RequestEvent::Submitted {
                    request_id,
                    owner,
                    batch_id,
                    spec,
                    at,
                } => {
                    new_rows.ids.push(request_id.to_string());
                    new_rows.owners.push(owner);
                    new_rows.batches.push(batch_id.to_string());
                    new_rows.custom_ids.push(spec.custom_id);
                    new_rows.endpoints.push(spec.endpoint.path().to_owned());
                    new_rows.models.push(spec.model);
                    new_rows
                        .deliveries
                        .push(serde_json::to_value(&spec.delivery).unwrap_or_default());
                    new_rows.targets.push(spec.delivery.target());
                    new_rows.bodies.push(spec.body);
                    new_rows.versions.push(event.sequence);
                    new_rows.times.push(at);
                }
                RequestEvent::ResultRecorded { response, cost, at } => {
                    change.record(RequestStatus::ProviderProcessed, event.sequence, at);
                    change.response = Some(response);
                    change.cost = cost;
                }
                RequestEvent::Failed { error, at } => {
                    change.record(RequestStatus::Failed, event.sequence, at);
                    change.error = Some(error);
                }
                RequestEvent::DeliveryStarted { at } => {
                    change.record(RequestStatus::Delivering, event.sequence, at);
                    change.delivery.start();
                }
                RequestEvent::DeliveryAttempted {
                    attempt, retry_at, ..
                } => {
                    change.record(RequestStatus::Delivering, event.sequence, event.recorded_at);
                    let error = attempt.error.or_else(|| {
                        attempt
                            .status_code
                            .filter(|code| !(200..300).contains(code))
                            .map(|code| format!("HTTP {code}"))
                    });
                    change.delivery.attempted(attempt.number, retry_at, error);
                }
                RequestEvent::DeliveryFailed { reason, at } => {
                    change.record(RequestStatus::DeliveryFailed, event.sequence, at);
                    change.delivery.ended(Some(reason));
                }
                RequestEvent::Delivered { at } => {
                    change.record(RequestStatus::Delivered, event.sequence, at);
                    change.delivery.ended(None);
                }
                other @ (RequestEvent::SentToProvider { .. }
                | RequestEvent::Expired { .. }
                | RequestEvent::Cancelled { .. }
                | RequestEvent::Consumed { .. }
                | RequestEvent::ConsumeFailed { .. }) => {
                    change.record(other.status(), event.sequence, other.at());
                }
            }
        }
        new_rows.flush(conn).await?;
        let mut rows = Updates::default();
        for (id, change) in changes {
            let Some(status) = change.status else {
                continue;
            };
            rows.ids.push(id);
            rows.statuses.push(status.as_str());
            rows.versions.push(change.version);
            rows.times.push(change.at);
            rows.responses.push(change.response);
            rows.costs
                .push(change.cost.as_ref().map(|cost| cost.nano_usd));
            rows.prices.push(change.cost.map(|cost| cost.price));
            rows.errors.push(change.error);
            rows.rounds_started.push(change.delivery.rounds_started);
            rows.attempts.push(change.delivery.attempts);
            rows.schedule_set.push(change.delivery.schedule.is_some());
            rows.next_attempts.push(change.delivery.schedule.flatten());
            rows.delivery_errors_set
                .push(change.delivery.error.is_some());
            rows.delivery_errors.push(change.delivery.error.flatten());
        }
        if rows.ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE requests r
                SET status = u.status, version = u.version, updated_at = u.at,
                    response = COALESCE(u.response, r.response),
                    error = COALESCE(u.error, r.error),
                    delivery_rounds = r.delivery_rounds + u.rounds_started,
                    delivery_attempts = COALESCE(u.attempts, r.delivery_attempts),
                    next_attempt_at = CASE WHEN u.schedule_set THEN u.next_attempt_at
                                           ELSE r.next_attempt_at END,
                    delivery_error = CASE WHEN u.delivery_error_set THEN u.delivery_error
                                          ELSE r.delivery_error END,
                    cost_nano_usd = COALESCE(u.cost, r.cost_nano_usd),
                    cost_price = COALESCE(u.price, r.cost_price)
               FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::timestamptz[],
                           $5::jsonb[], $6::jsonb[], $7::int[], $8::int[], $9::bool[],
                           $10::timestamptz[], $11::bool[], $12::text[], $13::bigint[],
                           $14::text[])
                    AS u(id, status, version, at, response, error, rounds_started, attempts,
                         schedule_set, next_attempt_at, delivery_error_set, delivery_error,
                         cost, price)
              WHERE r.id = u.id::uuid",
        )
        .bind(rows.ids)
        .bind(rows.statuses)
        .bind(rows.versions)
        .bind(rows.times)
        .bind(rows.responses)
        .bind(rows.errors)
        .bind(rows.rounds_started)
        .bind(rows.attempts)
        .bind(rows.schedule_set)
        .bind(rows.next_attempts)
        .bind(rows.delivery_errors_set)
        .bind(rows.delivery_errors)
        .bind(rows.costs)
        .bind(rows.prices)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A request's latest state within one page.
#[derive(Default)]
struct Change {
    status: Option<RequestStatus>,
    version: i64,
    at: DateTime<Utc>,
    response: Option<Value>,
    cost: Option<Cost>,
    error: Option<Value>,
    delivery: DeliveryChange,
}

/// How a request's delivery columns change within one page; `None` leaves a column as is.
#[derive(Default)]
struct DeliveryChange {
    rounds_started: i32,
    attempts: Option<i32>,
    schedule: Option<Option<DateTime<Utc>>>,
    error: Option<Option<String>>,
}

impl DeliveryChange {
    fn start(&mut self) {
        self.rounds_started += 1;
        self.attempts = Some(0);
        self.schedule = Some(None);
        self.error = Some(None);
    }

    fn attempted(&mut self, number: u32, retry_at: Option<DateTime<Utc>>, error: Option<String>) {
        self.attempts = Some(i32::try_from(number).unwrap_or(i32::MAX));
        self.schedule = Some(retry_at);
        self.error = Some(error);
    }

    fn ended(&mut self, reason: Option<String>) {
        self.schedule = Some(None);
        if reason.is_some() {
            self.error = Some(reason);
        }
    }
}

impl Change {
    fn record(&mut self, status: RequestStatus, version: i64, at: DateTime<Utc>) {
        self.status = Some(status);
        self.version = version;
        self.at = at;
    }
}

/// The update arrays of one page.
#[derive(Default)]
struct Updates<'a> {
    ids: Vec<&'a str>,
    statuses: Vec<&'static str>,
    versions: Vec<i64>,
    times: Vec<DateTime<Utc>>,
    responses: Vec<Option<Value>>,
    errors: Vec<Option<Value>>,
    rounds_started: Vec<i32>,
    attempts: Vec<Option<i32>>,
    schedule_set: Vec<bool>,
    next_attempts: Vec<Option<DateTime<Utc>>>,
    delivery_errors_set: Vec<bool>,
    delivery_errors: Vec<Option<String>>,
    costs: Vec<Option<i64>>,
    prices: Vec<Option<String>>,
}

/// A row of the `requests` read model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct RequestRow {
    /// The request's id.
    pub id: uuid::Uuid,
    /// The owning client.
    pub owner: String,
    /// The batch it joined.
    pub batch_id: uuid::Uuid,
    /// The client's custom id.
    pub custom_id: String,
    /// The endpoint path.
    pub endpoint: String,
    /// The model.
    pub model: String,
    /// The status, e.g. `pending`.
    pub status: String,
    /// How the result is delivered.
    pub delivery: Value,
    /// The body sent to the provider.
    pub body: Value,
    /// The provider's response, once recorded.
    pub response: Option<Value>,
    /// What the result cost, in billionths of a US dollar (with a result and a price).
    pub cost_nano_usd: Option<i64>,
    /// The price table entry it was priced with.
    pub cost_price: Option<String>,
    /// The provider's error, once recorded.
    pub error: Option<Value>,
    /// Delivery rounds started (each redelivery starts one).
    pub delivery_rounds: i32,
    /// Attempts in the current round.
    pub delivery_attempts: i32,
    /// When the next attempt is due, while delivering after a failed attempt.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last attempt failed, or why delivery failed.
    pub delivery_error: Option<String>,
    /// The aggregate's version this row reflects.
    pub version: i64,
    /// When it was submitted.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// What a request list is narrowed to; `owner` scopes it (`None`: every owner's, for admins).
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this owner's requests.
    pub owner: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this endpoint path.
    pub endpoint: Option<String>,
    /// Only this batch's requests.
    pub batch_id: Option<uuid::Uuid>,
    /// Submitted at or after.
    pub created_from: Option<DateTime<Utc>>,
    /// Submitted before.
    pub created_until: Option<DateTime<Utc>>,
    /// Only requests whose results are pulled by their owner (poll delivery).
    pub polled_only: bool,
}

const COLUMNS: &str = "id, owner, batch_id, custom_id, endpoint, model, status, delivery, body,
                       response, cost_nano_usd, cost_price, error, delivery_rounds,
                       delivery_attempts, next_attempt_at, delivery_error, version, created_at,
                       updated_at";

/// One request, if `owner` (when given) owns it.
///
/// # Errors
/// Any database error.
pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    owner: Option<&str>,
    id: uuid::Uuid,
) -> Result<Option<RequestRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM requests WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await
}

/// Requests matching `filter`, newest first, after the keyset position `after`.
///
/// # Errors
/// Any database error.
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    filter: &RequestFilter,
    after: Option<(DateTime<Utc>, uuid::Uuid)>,
    limit: i64,
) -> Result<Vec<RequestRow>, sqlx::Error> {
    Listing::of("requests", COLUMNS)
        .equal("owner", filter.owner.as_deref())
        .equal("status", filter.status.as_deref())
        .equal("model", filter.model.as_deref())
        .equal("endpoint", filter.endpoint.as_deref())
        .equal("batch_id", filter.batch_id)
        .created(filter.created_from, filter.created_until)
        .when(filter.polled_only, "delivery ->> 'kind' = 'poll'")
        .page(after, limit)
        .build_query_as()
        .fetch_all(db)
        .await
}
