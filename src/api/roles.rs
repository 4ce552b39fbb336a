//! Which instance holds which role (projector sets, workers): for operators (admin).

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ApiError, Caller};
use crate::projection::{holders, Roles};

/// A role and the instance holding it.
#[derive(SimpleObject)]
pub(crate) struct RoleHolder {
    /// The role: a projector set (`projections`, `projections.analytics`) or a worker.
    role: String,
    /// The holding instance (its connections' `application_name`); null while none holds
    /// it (a standby takes it within `CHRONICLE_STANDBY_RETRY_MS`).
    instance: Option<String>,
    /// Since when the holding instance's roles connection exists.
    since: Option<DateTime<Utc>>,
}

/// Role queries.
#[derive(Default)]
pub(crate) struct RoleQuery;

#[Object]
impl RoleQuery {
    /// Every role and the instance holding it now (admin). Errors: `FORBIDDEN`.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<RoleHolder>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let names = ctx.data_unchecked::<Roles>().names();
        let found = holders(ctx.data_unchecked::<PgPool>(), &names).await?;
        Ok(found
            .into_iter()
            .map(|holder| RoleHolder {
                role: holder.role,
                instance: holder.instance,
                since: holder.since,
            })
            .collect())
    }
}
