//! Custom ids already in a batch, as the append's unique index (`batch_custom_ids`) holds
//! them: what a submission reports when that index refused it, or checks before a bulk call.

use sqlx::PgPool;
use uuid::Uuid;

/// The unique rule the append keeps: one custom id once per batch.
pub(super) const CUSTOM_IDS_UNIQUE: &str = "batch_custom_ids_pkey";

/// Which of `custom_ids` batch `batch_id` already holds.
pub(super) async fn taken(
    pool: &PgPool,
    batch_id: Uuid,
    custom_ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT custom_id FROM batch_custom_ids WHERE batch_id = $1 AND custom_id = ANY($2)",
    )
    .bind(batch_id)
    .bind(custom_ids)
    .fetch_all(pool)
    .await
}
