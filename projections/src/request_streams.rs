//! `request_streams`: settles a batch's requests after the batch's outcome.
//!
//! A submission is one append to the batch stream (`BatchRequestsAdded` carries the request
//! bodies) together with each accepted request's first event, written by the command itself
//! (see `StartsStreams`). When the batch is cancelled or fails, or its owner withdraws a
//! request, this log consumer moves the requests that were still waiting: pending ones are
//! cancelled (or fail with the batch), ones at the provider fail. It writes in the same
//! transaction that advances its checkpoint, so each derived event is appended exactly once,
//! also across crashes. The request transition table skips requests that moved on, so a
//! rebuild from the start of the log is harmless: `reset` deletes nothing.

use async_trait::async_trait;
use chronicle_aggregates::batch::BatchEvent;
use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{request_moves, ProjectionError, Projector, RecordedEvent};

/// The batch events that move the batch's requests.
const SETTLING: [&str; 3] = ["BatchCancelled", "BatchFailed", "BatchRequestWithdrawn"];

/// The log consumer that settles requests after their batch's outcome.
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

    fn may_append(&self, events: &[&RecordedEvent]) -> bool {
        events
            .iter()
            .any(|e| SETTLING.contains(&e.event_type.as_str()))
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        // Only these move requests: the others (submissions with large bodies among them)
        // are not read.
        for event in events
            .iter()
            .filter(|e| SETTLING.contains(&e.event_type.as_str()))
        {
            match event.decode::<BatchEvent>()? {
                BatchEvent::Cancelled { at } => {
                    let error = json!({ "message": "the batch was cancelled by its owner" });
                    settle(conn, event, at, error).await?;
                }
                BatchEvent::Failed { error, at } => settle(conn, event, at, error).await?,
                BatchEvent::RequestWithdrawn { request_id, at } => {
                    withdraw(conn, event, request_id, at).await?;
                }
                BatchEvent::Opened { .. }
                | BatchEvent::RequestsAdded { .. }
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
