//! `request_streams`: derives request events from their batch's events.
//!
//! A submission is one append to the batch stream (`BatchRequestsAdded` carries the request
//! bodies). This log consumer derives a `RequestSubmitted` event (sequence 1) for every entry,
//! and, when the batch is cancelled or fails, settles its requests that were still waiting:
//! pending ones are cancelled (or fail with the batch), ones at the provider fail. It writes
//! in the same transaction that advances its checkpoint, so each derived event is appended
//! exactly once, also across crashes; and because it reads the log in order, a request's
//! stream always exists before its batch's outcome arrives. Appends skip streams that already
//! exist or moved on, so a rebuild from the start of the log is harmless: `reset` deletes
//! nothing.

use async_trait::async_trait;
use chronicle_aggregates::batch::{BatchEntry, BatchEvent, BatchKey};
use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{request_moves, ProjectionError, Projector, RecordedEvent};

/// The log consumer that starts request streams.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestStreams;

#[async_trait]
impl Projector for RequestStreams {
    fn name(&self) -> &'static str {
        "request_streams"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Batch"])
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| e.aggregate_type == "Batch") {
            match event.decode::<BatchEvent>()? {
                BatchEvent::RequestsAdded { entries, at, .. } => {
                    start_streams(conn, event, entries, at).await?;
                }
                BatchEvent::Cancelled { at } => {
                    let error = json!({ "message": "the batch was cancelled by its owner" });
                    settle(conn, event, at, error).await?;
                }
                BatchEvent::Failed { error, at } => settle(conn, event, at, error).await?,
                BatchEvent::RequestWithdrawn { request_id, at } => {
                    withdraw(conn, event, request_id, at).await?;
                }
                BatchEvent::Opened { .. }
                | BatchEvent::Closed { .. }
                | BatchEvent::InputUploaded { .. }
                | BatchEvent::SubmittedToProvider { .. }
                | BatchEvent::ProviderProgressed { .. }
                | BatchEvent::ProviderCompleted { .. }
                | BatchEvent::DownloadStarted { .. }
                | BatchEvent::ResultsDownloaded { .. }
                | BatchEvent::DeliveryStarted { .. }
                | BatchEvent::DeliveryFinished { .. }
                | BatchEvent::ProviderCancelRequested { .. }
                | BatchEvent::Expired { .. } => {}
            }
        }
        Ok(())
    }
}

fn metadata(event: &RecordedEvent) -> Value {
    let cause = event.cursor.to_string();
    json!({
        "actor": "system",
        "correlation_id": event.metadata.correlation_id,
        "causation_id": cause,
        "command_id": Uuid::new_v5(&Uuid::NAMESPACE_OID, cause.as_bytes()).to_string(),
    })
}

/// Cancels a request its batch withdrew, if it is still pending.
async fn withdraw(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    request_id: Uuid,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let cancel = |_: &str, from: RequestStatus| {
        (from == RequestStatus::Pending).then_some(RequestEvent::Cancelled { at })
    };
    request_moves::append(conn, &metadata(event), &[request_id.to_string()], cancel).await?;
    Ok(())
}

/// Settles the batch's waiting requests after it was cancelled or failed: pending ones are
/// cancelled (or fail with the batch), ones at the provider fail.
async fn settle(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    at: DateTime<Utc>,
    error: Value,
) -> Result<(), ProjectionError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT request_id::text FROM batch_custom_ids WHERE batch_id = $1::uuid",
    )
    .bind(&event.aggregate_id)
    .fetch_all(&mut *conn)
    .await?;
    let cancelled = event.event_type == "BatchCancelled";
    // The transition table keeps finished requests where they are.
    let outcome = |_: &str, from: RequestStatus| {
        Some(if cancelled && from == RequestStatus::Pending {
            RequestEvent::Cancelled { at }
        } else {
            RequestEvent::Failed {
                error: error.clone(),
                at,
            }
        })
    };
    request_moves::append(conn, &metadata(event), &ids, outcome).await?;
    Ok(())
}

/// Starts the streams of requests a batch accepted.
async fn start_streams(
    conn: &mut PgConnection,
    event: &RecordedEvent,
    entries: Vec<BatchEntry>,
    at: DateTime<Utc>,
) -> Result<(), ProjectionError> {
    let key = batch_key(conn, &event.aggregate_id).await?;
    let batch_id = event.aggregate_id.parse().map_err(|_| malformed(event))?;
    let mut ids = Vec::with_capacity(entries.len());
    let mut payloads = Vec::with_capacity(entries.len());
    let (mut event_type, mut event_version) = (String::new(), String::new());
    for entry in entries {
        ids.push(entry.request_id.to_string());
        let submitted = RequestEvent::Submitted {
            request_id: entry.request_id,
            owner: key.owner.clone(),
            batch_id,
            spec: entry.spec,
            at,
        };
        event_type = submitted.event_type();
        event_version = submitted.event_version();
        payloads.push(serde_json::to_value(&submitted).map_err(|_| malformed(event))?);
    }
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Request', id, 1, $3, $4, payload, $5
               FROM UNNEST($1::text[], $2::jsonb[]) AS t(id, payload)
             ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&payloads)
    .bind(&event_type)
    .bind(&event_version)
    .bind(metadata(event))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn batch_key(conn: &mut PgConnection, batch_id: &str) -> Result<BatchKey, ProjectionError> {
    let opened: Value = sqlx::query_scalar(
        "SELECT payload FROM events
          WHERE aggregate_type = 'Batch' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(batch_id)
    .fetch_one(conn)
    .await?;
    serde_json::from_value(opened["Opened"]["key"].clone()).map_err(|error| {
        ProjectionError::Malformed {
            position: 0,
            event_type: "BatchOpened".into(),
            reason: error.to_string(),
        }
    })
}

fn malformed(event: &RecordedEvent) -> ProjectionError {
    ProjectionError::Malformed {
        position: event.cursor.position,
        event_type: event.event_type.clone(),
        reason: "unexpected payload".into(),
    }
}
