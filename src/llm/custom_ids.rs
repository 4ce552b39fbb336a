//! The batch aggregate's custom-id lookup, over the index the append trigger keeps.

use async_trait::async_trait;
use chronicle_aggregates::batch::{CustomIds, LookupFailure};
use sqlx::PgPool;
use uuid::Uuid;

/// `batch_custom_ids` in PostgreSQL.
pub struct PgCustomIds {
    pool: PgPool,
}

impl PgCustomIds {
    /// A lookup over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl CustomIds for PgCustomIds {
    async fn taken(
        &self,
        batch_id: Uuid,
        custom_ids: &[String],
    ) -> Result<Vec<String>, LookupFailure> {
        sqlx::query_scalar(
            "SELECT custom_id FROM batch_custom_ids WHERE batch_id = $1 AND custom_id = ANY($2)",
        )
        .bind(batch_id)
        .bind(custom_ids)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| {
            if crate::command::is_unavailable(&error) {
                LookupFailure::Unavailable(error.to_string())
            } else {
                LookupFailure::Failed(error.to_string())
            }
        })
    }
}
