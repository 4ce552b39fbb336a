//! Deciding many requests' moves at once, one event each: the provider driver (sent, result,
//! failure, expiry), delivery, and the batch commands that settle requests (a cancellation,
//! failure or withdrawal) all decide here; the command path appends the moves. Each
//! request's latest event decides whether it may move, by the request's transition table; a
//! request that changed meanwhile makes the append fail on its stream key, and the command
//! decides again.

use std::collections::HashMap;

use chronicle_aggregates::request::{RequestEvent, RequestStatus};
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
