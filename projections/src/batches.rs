//! `batches`: one row per batch with its state, counts and sizes, from the batch streams.

use async_trait::async_trait;
use chronicle_aggregates::batch::{BatchEvent, BatchStatus};
use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;
use sqlx::PgConnection;

use crate::listing::Listing;
use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the `batches` table.
#[derive(Debug, Default, Clone, Copy)]
pub struct Batches;

#[async_trait]
impl Projector for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Batch"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["batches"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| e.aggregate_type == "Batch") {
            if event.event_type == "BatchRequestsAdded" {
                add_requests(conn, event).await?;
                continue;
            }
            let decoded: BatchEvent = event.decode()?;
            let (id, version, at) = (&event.aggregate_id, event.sequence, decoded.at());
            let status = decoded.status().as_str();
            let statement = match &decoded {
                BatchEvent::Opened { key, .. } => sqlx::query(
                    "INSERT INTO batches (id, owner, endpoint, model, status, request_count,
                                          size_bytes, version, created_at, updated_at)
                     VALUES ($1::uuid, $5, $6, $7, $2, 0, 0, $3, $4, $4)",
                )
                .bind(id)
                .bind(status)
                .bind(version)
                .bind(at)
                .bind(&key.owner)
                .bind(key.endpoint.path())
                .bind(&key.model),
                BatchEvent::Closed {
                    reason, successor, ..
                } => sqlx::query(
                    "UPDATE batches SET status = $2, version = $3, updated_at = $4,
                            close_reason = $5, successor = $6
                      WHERE id = $1::uuid",
                )
                .bind(id)
                .bind(status)
                .bind(version)
                .bind(at)
                .bind(reason.as_str())
                .bind(successor),
                BatchEvent::SubmittedToProvider {
                    provider_batch_id, ..
                } => sqlx::query(
                    "UPDATE batches SET status = $2, version = $3, updated_at = $4,
                            provider_batch_id = $5
                      WHERE id = $1::uuid",
                )
                .bind(id)
                .bind(status)
                .bind(version)
                .bind(at)
                .bind(provider_batch_id),
                BatchEvent::ProviderCancelRequested { .. } => sqlx::query(
                    "UPDATE batches SET version = $2, updated_at = $3,
                            provider_cancel_requested = true
                      WHERE id = $1::uuid",
                )
                .bind(id)
                .bind(version)
                .bind(at),
                // Read above without its bodies.
                BatchEvent::RequestsAdded { .. } => continue,
                BatchEvent::InputUploaded { .. }
                | BatchEvent::RequestWithdrawn { .. }
                | BatchEvent::ProviderProgressed { .. }
                | BatchEvent::ProviderCompleted { .. }
                | BatchEvent::DownloadStarted { .. }
                | BatchEvent::ResultsDownloaded { .. }
                | BatchEvent::DeliveryStarted { .. }
                | BatchEvent::DeliveryFinished { .. }
                | BatchEvent::Failed { .. }
                | BatchEvent::Cancelled { .. }
                | BatchEvent::Expired { .. } => sqlx::query(
                    "UPDATE batches SET status = $2, version = $3, updated_at = $4
                      WHERE id = $1::uuid",
                )
                .bind(id)
                .bind(status)
                .bind(version)
                .bind(at),
            };
            statement.execute(&mut *conn).await?;
        }
        Ok(())
    }
}

/// What `batches` reads of a `BatchRequestsAdded`: counts, not the requests' bodies.
#[derive(Deserialize)]
struct Added {
    entries: Vec<IgnoredAny>,
    size_bytes: u64,
    at: DateTime<Utc>,
}

/// Counts a submission's requests and bytes into its batch's row.
async fn add_requests(
    conn: &mut PgConnection,
    event: &RecordedEvent,
) -> Result<(), ProjectionError> {
    let added: Added = Added::deserialize(&event.payload["RequestsAdded"]).map_err(|error| {
        ProjectionError::Malformed {
            position: event.cursor.position,
            event_type: event.event_type.clone(),
            reason: error.to_string(),
        }
    })?;
    sqlx::query(
        "UPDATE batches SET status = $6, version = $2, updated_at = $3,
                request_count = request_count + $4, size_bytes = size_bytes + $5
          WHERE id = $1::uuid",
    )
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .bind(added.at)
    .bind(i64::try_from(added.entries.len()).unwrap_or(i64::MAX))
    .bind(i64::try_from(added.size_bytes).unwrap_or(i64::MAX))
    .bind(BatchStatus::Building.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// A row of the `batches` read model.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct BatchRow {
    /// The batch's id.
    pub id: uuid::Uuid,
    /// The owning client.
    pub owner: String,
    /// The endpoint path.
    pub endpoint: String,
    /// The model.
    pub model: String,
    /// The status, e.g. `building`.
    pub status: String,
    /// Requests in the batch.
    pub request_count: i64,
    /// Bytes of its input file.
    pub size_bytes: i64,
    /// Why it closed, once closed.
    pub close_reason: Option<String>,
    /// The next batch of the same key, once closed.
    pub successor: Option<uuid::Uuid>,
    /// The provider's batch id, once submitted.
    pub provider_batch_id: Option<String>,
    /// The aggregate's version this row reflects.
    pub version: i64,
    /// When it opened.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// What a batch list is narrowed to; `owner` scopes it (`None`: every owner's, for admins).
#[derive(Debug, Clone, Default)]
pub struct BatchFilter {
    /// Only this owner's batches.
    pub owner: Option<String>,
    /// Only this status.
    pub status: Option<String>,
    /// Only this model.
    pub model: Option<String>,
    /// Only this endpoint path.
    pub endpoint: Option<String>,
    /// Opened at or after.
    pub created_from: Option<chrono::DateTime<chrono::Utc>>,
    /// Opened before.
    pub created_until: Option<chrono::DateTime<chrono::Utc>>,
}

const COLUMNS: &str = "id, owner, endpoint, model, status, request_count, size_bytes,
                       close_reason, successor, provider_batch_id, version, created_at, updated_at";

/// One batch, if `owner` (when given) owns it.
///
/// # Errors
/// Any database error.
pub async fn get(
    db: impl sqlx::PgExecutor<'_>,
    owner: Option<&str>,
    id: uuid::Uuid,
) -> Result<Option<BatchRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM batches WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await
}

/// Batches matching `filter`, newest first, after the keyset position `after`.
///
/// # Errors
/// Any database error.
pub async fn list(
    db: impl sqlx::PgExecutor<'_>,
    filter: &BatchFilter,
    after: Option<(chrono::DateTime<chrono::Utc>, uuid::Uuid)>,
    limit: i64,
) -> Result<Vec<BatchRow>, sqlx::Error> {
    Listing::of("batches", COLUMNS)
        .equal("owner", filter.owner.as_deref())
        .equal("status", filter.status.as_deref())
        .equal("model", filter.model.as_deref())
        .equal("endpoint", filter.endpoint.as_deref())
        .created(filter.created_from, filter.created_until)
        .page(after, limit)
        .build_query_as()
        .fetch_all(db)
        .await
}

/// How many of a batch's requests are in each status (statuses with none are left out).
///
/// # Errors
/// Any database error.
pub async fn request_counts(
    db: impl sqlx::PgExecutor<'_>,
    batch_id: uuid::Uuid,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT status, n FROM batch_request_counts WHERE batch_id = $1 AND n > 0
          ORDER BY status",
    )
    .bind(batch_id)
    .fetch_all(db)
    .await
}
