//! The audit trail over GraphQL: every state change of a request or batch.

use async_graphql::{Context, Object, SimpleObject};
use chronicle_projections::transitions;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{ApiError, Caller};
use crate::reads::Reads;

/// One state change, with who caused it and where it stands in the log.
#[derive(SimpleObject)]
pub(crate) struct Transition {
    /// The event's global position.
    position: i64,
    /// `Request` or `Batch`.
    aggregate_type: String,
    /// The aggregate's id.
    aggregate_id: String,
    /// The event's sequence in its aggregate.
    sequence: i64,
    /// The state before (none for the first).
    from_state: Option<String>,
    /// The state after.
    to_state: String,
    /// The event that changed it.
    event_type: String,
    /// Who caused it (a client id, or `system`).
    actor: String,
    /// The client call it belongs to.
    correlation_id: String,
    /// When.
    recorded_at: DateTime<Utc>,
}

/// Audit queries.
#[derive(Default)]
pub(crate) struct TransitionQuery;

#[Object]
impl TransitionQuery {
    /// Every state change of one of your requests or batches, oldest first.
    async fn transitions(
        &self,
        ctx: &Context<'_>,
        aggregate_id: Uuid,
    ) -> Result<Vec<Transition>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let rows = transitions::of_aggregate(
            &ctx.data_unchecked::<Reads>().pool,
            caller.scope(),
            aggregate_id,
        )
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| Transition {
                position: row.position,
                aggregate_type: row.aggregate_type,
                aggregate_id: row.aggregate_id,
                sequence: row.sequence,
                from_state: row.from_state,
                to_state: row.to_state,
                event_type: row.event_type,
                actor: row.actor,
                correlation_id: row.correlation_id,
                recorded_at: row.recorded_at,
            })
            .collect())
    }
}
