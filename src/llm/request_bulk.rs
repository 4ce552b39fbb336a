//! Moving many requests at once, for the provider driver: a batch sent, results arrived, a
//! batch failed or expired. One transaction per call appends one event to each request whose
//! current state allows it by the request's transition table, so repeating a call after a
//! crash changes nothing that already happened. A concurrent command on one of the requests
//! makes the whole call fail on the stream key; the caller retries it.
//!
//! Only worker-driven events go through here (sent, result, failure, expiry): they carry no
//! decision beyond the transition table. Owner commands go through the aggregate.

use std::collections::HashMap;

use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use chronicle_projections::EventMetadata;
use cqrs_es::DomainEvent;
use sqlx::PgPool;
use uuid::Uuid;

/// The current status of each of `ids` that has a stream.
pub(crate) async fn statuses(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, i64, RequestStatus)>, sqlx::Error> {
    let ids: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    let rows: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, sequence, event_type
           FROM events WHERE aggregate_type = 'Request' AND aggregate_id = ANY($1)
          ORDER BY aggregate_id, sequence DESC",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, sequence, event_type)| {
            let status = RequestEvent::status_after_type(&event_type)?;
            Some((id.parse().ok()?, sequence, status))
        })
        .collect())
}

/// Appends `event` for each request where the table allows it; returns how many moved.
///
/// # Errors
/// Any database error, including a concurrent append to one of the requests.
pub(crate) async fn append(
    pool: &PgPool,
    metadata: &EventMetadata,
    events: Vec<(Uuid, RequestEvent)>,
) -> Result<usize, sqlx::Error> {
    if events.is_empty() {
        return Ok(0);
    }
    let ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
    let current: HashMap<Uuid, (i64, RequestStatus)> = statuses(pool, &ids)
        .await?
        .into_iter()
        .map(|(id, sequence, status)| (id, (sequence, status)))
        .collect();
    let mut rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, event) in events {
        let Some((sequence, from)) = current.get(&id) else {
            continue;
        };
        if !from.can_transition_to(event.status()) {
            continue;
        }
        rows.0.push(id.to_string());
        rows.1.push(sequence + 1);
        rows.2.push(event.event_type());
        rows.3.push(event.event_version());
        rows.4
            .push(serde_json::to_value(&event).unwrap_or_default());
    }
    let moved = rows.0.len();
    if moved > 0 {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Request', * , $6 FROM UNNEST($1::text[], $2::bigint[], $3::text[],
                                                  $4::text[], $5::jsonb[])",
        )
        .bind(rows.0)
        .bind(rows.1)
        .bind(rows.2)
        .bind(rows.3)
        .bind(rows.4)
        .bind(serde_json::to_value(metadata.to_map()).unwrap_or_default())
        .execute(pool)
        .await?;
    }
    Ok(moved)
}
