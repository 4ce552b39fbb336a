//! Moving many requests at once by appending one event to each: the provider driver (sent,
//! result, failure, expiry), delivery, and `request_streams` (a batch's cancellation, failure
//! or withdrawal) all decide their moves here. Each request's latest event decides whether it
//! may move, by the request's transition table; a request that changed meanwhile makes the
//! append fail on its stream key, and the caller retries (next round, or the projector's
//! page).

use std::collections::HashMap;

use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use cqrs_es::DomainEvent;
use serde_json::Value;
use sqlx::PgConnection;

/// One request's move: the event it takes and the sequence that event takes.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestMove {
    /// The request's id.
    pub request_id: String,
    /// The event's sequence: one after the request's latest.
    pub sequence: i64,
    /// The event.
    pub event: RequestEvent,
}

/// The event `decide` returns for each request's current status, where the transition table
/// allows it, at the sequence after the request's latest (read through `conn`).
///
/// # Errors
/// Any database error.
pub async fn decide(
    conn: &mut PgConnection,
    ids: &[String],
    decide: impl Fn(&str, RequestStatus) -> Option<RequestEvent>,
) -> Result<Vec<RequestMove>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let current: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, sequence, event_type
           FROM events WHERE aggregate_type = 'Request' AND aggregate_id = ANY($1)
          ORDER BY aggregate_id, sequence DESC",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(current
        .into_iter()
        .filter_map(|(request_id, sequence, event_type)| {
            let from = RequestEvent::status_after_type(&event_type)?;
            let event = decide(&request_id, from).filter(|e| from.can_transition_to(e.status()))?;
            Some(RequestMove {
                request_id,
                sequence: sequence + 1,
                event,
            })
        })
        .collect())
}

/// Appends, in `conn`'s transaction, the moves [`decide`] picks; returns how many requests
/// moved. For a log consumer that writes in its page's transaction (`request_streams`);
/// commands append through the group commit instead (`Commands::move_requests`).
///
/// # Errors
/// Any database error, including a concurrent append to one of the requests.
pub async fn append(
    conn: &mut PgConnection,
    metadata: &Value,
    ids: &[String],
    decide: impl Fn(&str, RequestStatus) -> Option<RequestEvent>,
) -> Result<usize, sqlx::Error> {
    let moves = self::decide(conn, ids, decide).await?;
    if moves.is_empty() {
        return Ok(0);
    }
    let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for RequestMove {
        request_id,
        sequence,
        event,
    } in &moves
    {
        rows.0.push(request_id.as_str());
        rows.1.push(*sequence);
        rows.2.push(event.event_type());
        rows.3.push(event.event_version());
        rows.4.push(serde_json::to_value(event).unwrap_or_default());
    }
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
    Ok(moves.len())
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
