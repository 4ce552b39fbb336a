//! Moving many requests at once by appending one derived event to each: the provider driver
//! (sent, result, failure, expiry) and `request_streams` (a batch's cancellation, failure or
//! withdrawal) both use this. Each request's latest event decides whether it may move, by
//! the request's transition table; a request that changed meanwhile makes the insert fail on
//! its stream key, and the caller retries (next round, or the projector's page).

use std::collections::HashMap;

use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use cqrs_es::DomainEvent;
use serde_json::Value;
use sqlx::PgConnection;

/// Appends to each request the event `decide` returns for its current status, when the
/// transition table allows it; returns how many requests moved.
///
/// # Errors
/// Any database error, including a concurrent append to one of the requests.
pub async fn append(
    conn: &mut PgConnection,
    metadata: &Value,
    ids: &[String],
    decide: impl Fn(&str, RequestStatus) -> Option<RequestEvent>,
) -> Result<usize, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let current: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, sequence, event_type
           FROM events WHERE aggregate_type = 'Request' AND aggregate_id = ANY($1)
          ORDER BY aggregate_id, sequence DESC",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, sequence, event_type) in current {
        let Some(from) = RequestEvent::status_after_type(&event_type) else {
            continue;
        };
        let Some(event) = decide(&id, from).filter(|e| from.can_transition_to(e.status())) else {
            continue;
        };
        rows.1.push(sequence + 1);
        rows.2.push(event.event_type());
        rows.3.push(event.event_version());
        rows.4
            .push(serde_json::to_value(&event).unwrap_or_default());
        rows.0.push(id);
    }
    let moved = rows.0.len();
    if moved > 0 {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Request', *, $6 FROM UNNEST($1::text[], $2::bigint[], $3::text[],
                                                 $4::text[], $5::jsonb[])",
        )
        .bind(rows.0)
        .bind(rows.1)
        .bind(rows.2)
        .bind(rows.3)
        .bind(rows.4)
        .bind(metadata)
        .execute(conn)
        .await?;
    }
    Ok(moved)
}

/// The same event for every request (where the table allows it).
pub fn all(event: &RequestEvent) -> impl Fn(&str, RequestStatus) -> Option<RequestEvent> + '_ {
    move |_, _| Some(event.clone())
}

/// Per-request events, e.g. results by request id.
pub fn each(
    events: &HashMap<String, RequestEvent>,
) -> impl Fn(&str, RequestStatus) -> Option<RequestEvent> + '_ {
    move |id, _| events.get(id).cloned()
}
