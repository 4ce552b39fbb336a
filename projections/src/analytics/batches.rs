//! `analytics.batch_turnaround` (and the view `batch_turnaround_daily` over it).

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::day;
use crate::{FailurePolicy, ProjectionError, Projector, RecordedEvent};

/// The projector behind batch turnaround analytics.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchAnalytics;

#[async_trait]
impl Projector for BatchAnalytics {
    fn name(&self) -> &'static str {
        "analytics_batches"
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::GO_ON
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Batch"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["analytics.batch_turnaround"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events.iter().filter(|e| e.aggregate_type == "Batch") {
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            // Read from the payload: a `RequestsAdded` carries up to 8 MB of bodies, and only
            // its count matters here.
            let body = &event.payload;
            let column = match event.event_type.as_str() {
                "BatchOpened" => {
                    let key = &body["Opened"]["key"];
                    sqlx::query(
                        "INSERT INTO batch_turnaround (batch_id, owner, model, day)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id)
                    .bind(key["owner"].as_str().unwrap_or_default())
                    .bind(key["model"].as_str().unwrap_or_default())
                    .bind(day(event.recorded_at))
                    .execute(&mut *conn)
                    .await?;
                    continue;
                }
                "BatchRequestsAdded" => {
                    let added = body["RequestsAdded"]["entries"]
                        .as_array()
                        .map_or(0, Vec::len);
                    sqlx::query(
                        "UPDATE batch_turnaround SET requests = requests + $2
                          WHERE batch_id = $1",
                    )
                    .bind(id)
                    .bind(i64::try_from(added).unwrap_or(i64::MAX))
                    .execute(&mut *conn)
                    .await?;
                    continue;
                }
                "BatchSubmittedToProvider" => "submitted_at",
                "BatchProviderCompleted" => "provider_completed_at",
                "BatchDeliveryFinished" => "done_at",
                _ => continue,
            };
            // The first time counts: a redelivered batch keeps its first `done_at`.
            sqlx::query(&format!(
                "UPDATE batch_turnaround SET {column} = coalesce({column}, $2)
                  WHERE batch_id = $1"
            ))
            .bind(id)
            .bind(event.recorded_at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
