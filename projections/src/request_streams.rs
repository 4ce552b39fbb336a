//! `request_streams`: starts each request's own event stream from the batch that accepted it.
//!
//! A submission is one append to the batch stream (`BatchRequestsAdded` carries the request
//! bodies). This log consumer derives a `RequestSubmitted` event (sequence 1) for every entry
//! and inserts it in the same transaction that advances its checkpoint, so each request
//! stream starts exactly once, also across crashes. Inserting ignores streams that already
//! exist, so a rebuild from the start of the log is harmless: `reset` deletes nothing.

use async_trait::async_trait;
use chronicle_aggregates::batch::{BatchEvent, BatchKey};
use chronicle_aggregates::request::RequestEvent;
use cqrs_es::DomainEvent;
use serde_json::{json, Value};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{ProjectionError, Projector, RecordedEvent};

/// The log consumer that starts request streams.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestStreams;

#[async_trait]
impl Projector for RequestStreams {
    fn name(&self) -> &'static str {
        "request_streams"
    }

    async fn reset(&self, _conn: &mut PgConnection) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events
            .iter()
            .filter(|e| e.event_type == "BatchRequestsAdded")
        {
            let BatchEvent::RequestsAdded { entries, at, .. } = event.decode()? else {
                continue;
            };
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
            let cause = event.cursor.to_string();
            let metadata = json!({
                "actor": "system",
                "correlation_id": event.metadata.correlation_id,
                "causation_id": cause,
                "command_id": Uuid::new_v5(&Uuid::NAMESPACE_OID, cause.as_bytes()).to_string(),
            });
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
            .bind(&metadata)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
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
