//! Projection progress for operators: where each projector stands and how far behind it is.

use async_graphql::{Context, Object, SimpleObject};
use chronicle_projections::checkpoint;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ApiError, Caller};

/// One projector's progress.
#[derive(SimpleObject)]
pub(crate) struct ProjectionStatus {
    /// The projector's name.
    name: String,
    /// The last applied event's log cursor.
    cursor: String,
    /// Events applied since the last rebuild.
    events_applied: i64,
    /// Committed events not applied yet.
    lag: i64,
    /// When the checkpoint last moved.
    updated_at: DateTime<Utc>,
}

/// Projection queries.
#[derive(Default)]
pub(crate) struct ProjectionQuery;

#[Object]
impl ProjectionQuery {
    /// Every projector's checkpoint and lag (admin). Errors: `FORBIDDEN`.
    async fn projections(&self, ctx: &Context<'_>) -> Result<Vec<ProjectionStatus>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let statuses = checkpoint::status(ctx.data_unchecked::<PgPool>()).await?;
        Ok(statuses
            .into_iter()
            .map(|status| ProjectionStatus {
                name: status.name,
                cursor: status.cursor.to_string(),
                events_applied: status.events_applied,
                lag: status.lag,
                updated_at: status.updated_at,
            })
            .collect())
    }
}
