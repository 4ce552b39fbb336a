//! `delivery_attempts`: every attempt to deliver every result, for owners and auditors.

use async_trait::async_trait;
use chronicle_aggregates::request::RequestEvent;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the `delivery_attempts` table.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeliveryAttempts;

/// The columns of one page's new rows.
#[derive(Default)]
struct Rows {
    request_ids: Vec<Uuid>,
    rounds: Vec<i32>,
    numbers: Vec<i32>,
    delivery_ids: Vec<Uuid>,
    started: Vec<DateTime<Utc>>,
    durations: Vec<i64>,
    status_codes: Vec<Option<i32>>,
    errors: Vec<Option<String>>,
    outcomes: Vec<&'static str>,
    retry_at: Vec<Option<DateTime<Utc>>>,
}

#[async_trait]
impl Projector for DeliveryAttempts {
    fn name(&self) -> &'static str {
        "delivery_attempts"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Request"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["delivery_attempts"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut rows = Rows::default();
        for event in events
            .iter()
            .filter(|e| e.aggregate_type == "Request" && e.event_type == "RequestDeliveryAttempted")
        {
            let RequestEvent::DeliveryAttempted {
                attempt, retry_at, ..
            } = event.decode()?
            else {
                continue;
            };
            let outcome = match retry_at {
                Some(_) => "retry",
                None if attempt.succeeded() => "delivered",
                None => "failed",
            };
            let Ok(request_id) = event.aggregate_id.parse() else {
                continue;
            };
            rows.request_ids.push(request_id);
            rows.rounds
                .push(i32::try_from(attempt.round).unwrap_or(i32::MAX));
            rows.numbers
                .push(i32::try_from(attempt.number).unwrap_or(i32::MAX));
            rows.delivery_ids.push(attempt.delivery_id);
            rows.started.push(attempt.started_at);
            rows.durations
                .push(i64::try_from(attempt.duration_ms).unwrap_or(i64::MAX));
            rows.status_codes.push(attempt.status_code.map(i32::from));
            rows.errors.push(attempt.error);
            rows.outcomes.push(outcome);
            rows.retry_at.push(retry_at);
        }
        if rows.request_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO delivery_attempts (request_id, round, number, delivery_id, started_at,
                                            duration_ms, status_code, error, outcome, retry_at)
             SELECT * FROM UNNEST($1::uuid[], $2::int[], $3::int[], $4::uuid[],
                                  $5::timestamptz[], $6::bigint[], $7::int[], $8::text[],
                                  $9::text[], $10::timestamptz[])",
        )
        .bind(rows.request_ids)
        .bind(rows.rounds)
        .bind(rows.numbers)
        .bind(rows.delivery_ids)
        .bind(rows.started)
        .bind(rows.durations)
        .bind(rows.status_codes)
        .bind(rows.errors)
        .bind(rows.outcomes)
        .bind(rows.retry_at)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// A row of the `delivery_attempts` read model.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryAttemptRow {
    /// The round, from 1 (each redelivery starts one).
    pub round: i32,
    /// The attempt within its round, from 1.
    pub number: i32,
    /// The round's delivery id, sent with every attempt.
    pub delivery_id: Uuid,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took.
    pub duration_ms: i64,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<i32>,
    /// What went wrong.
    pub error: Option<String>,
    /// `delivered`, `retry` or `failed`.
    pub outcome: String,
    /// When the next attempt was due.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The attempts of one request, oldest first.
///
/// # Errors
/// Any database error.
pub async fn of_request(
    db: impl PgExecutor<'_>,
    request_id: Uuid,
) -> Result<Vec<DeliveryAttemptRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT round, number, delivery_id, started_at, duration_ms, status_code, error,
                outcome, retry_at
           FROM delivery_attempts WHERE request_id = $1 ORDER BY round, number",
    )
    .bind(request_id)
    .fetch_all(db)
    .await
}
