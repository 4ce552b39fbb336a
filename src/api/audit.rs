//! Auditors over GraphQL: recompute the event log's hash chains.

use async_graphql::{Context, Object, SimpleObject};

use super::history::owned;
use super::{ApiError, Caller};
use crate::audit::{self, ChainBreak};
use crate::reads::Reads;
use chronicle_aggregates::client::Role;

/// Where a chain breaks.
#[derive(SimpleObject)]
pub(crate) struct AuditBreak {
    /// The event's global position.
    position: i64,
    /// Its aggregate type.
    aggregate_type: String,
    /// Its aggregate id.
    aggregate_id: String,
    /// Its sequence in the aggregate.
    sequence: i64,
    /// What is wrong.
    reason: String,
}

impl From<ChainBreak> for AuditBreak {
    fn from(broken: ChainBreak) -> Self {
        Self {
            position: broken.position,
            aggregate_type: broken.aggregate_type,
            aggregate_id: broken.aggregate_id,
            sequence: broken.sequence,
            reason: broken.reason,
        }
    }
}

/// What a verification found.
#[derive(SimpleObject)]
pub(crate) struct AuditVerification {
    /// True when every chain checked is whole.
    intact: bool,
    /// Events whose hash was recomputed.
    events_checked: u64,
    /// Aggregates whose chain is broken.
    broken_aggregates: u64,
    /// The broken link earliest in the log.
    first_break: Option<AuditBreak>,
}

/// Audit queries.
#[derive(Default)]
pub(crate) struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Recomputes the hash chain of one of your aggregates, or (without arguments) of the
    /// whole log, and reports the first broken link. Errors: `NOT_FOUND`, `VALIDATION`.
    async fn verify_audit_chain(
        &self,
        ctx: &Context<'_>,
        aggregate_type: Option<String>,
        aggregate_id: Option<String>,
    ) -> Result<AuditVerification, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let pool = &ctx.data_unchecked::<Reads>().pool;
        let aggregate = match (&aggregate_type, &aggregate_id) {
            (Some(kind), Some(id)) => {
                owned(ctx, kind, id).await?;
                Some((kind.as_str(), id.as_str()))
            }
            (None, None) if caller.authority == Role::Admin => None,
            (None, None) => return Err(ApiError::AdminOnly),
            (Some(_), None) | (None, Some(_)) => {
                return Err(ApiError::Validation(
                    "give both aggregateType and aggregateId, or neither".into(),
                ))
            }
        };
        let found = audit::verify(pool, aggregate).await?;
        Ok(AuditVerification {
            intact: found.first_break.is_none(),
            events_checked: found.events_checked,
            broken_aggregates: found.broken_aggregates,
            first_break: found.first_break.map(AuditBreak::from),
        })
    }
}
