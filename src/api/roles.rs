//! Which instance holds which role (projector sets, workers) or partition of one, and the
//! live instances: for operators (admin).

use std::collections::BTreeMap;

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ApiError, Caller};
use crate::projection::{holders, live_instances, Holder, Roles};

/// A role and who holds it.
#[derive(SimpleObject)]
pub(crate) struct RoleHolder {
    /// The role: a projector set (`projections`, `projections.analytics`), the rebuilds or a
    /// worker.
    role: String,
    /// The instance holding a role held whole (its connections' `application_name`); null
    /// while none holds it (another takes it within `CHRONICLE_STANDBY_RETRY_MS`) and for a
    /// partitioned role (see `partitions`).
    instance: Option<String>,
    /// Since when the holding instance's roles connection exists.
    since: Option<DateTime<Utc>>,
    /// A partitioned role's partitions of the aggregate id space, each with its holder;
    /// empty for a role held whole.
    partitions: Vec<PartitionHolder>,
}

/// One partition of a role and the instance holding it.
#[derive(SimpleObject)]
pub(crate) struct PartitionHolder {
    /// The partition (`chronicle_partition(aggregate id)`).
    partition: i32,
    /// The holding instance; null while none holds it.
    instance: Option<String>,
}

/// A live instance and what it holds.
#[derive(SimpleObject)]
pub(crate) struct Instance {
    /// Its name (its connections' `application_name`).
    name: String,
    /// Its roles connection's server process id.
    pid: i32,
    /// Since when its roles connection exists.
    since: DateTime<Utc>,
    /// The roles it holds whole.
    roles: Vec<String>,
    /// The partitions it holds of each partitioned role.
    partitions: Vec<HeldPartitions>,
}

/// The partitions of one role an instance holds.
#[derive(SimpleObject)]
pub(crate) struct HeldPartitions {
    /// The role.
    role: String,
    /// Its partitions held by the instance, ascending.
    partitions: Vec<i32>,
}

/// Role queries.
#[derive(Default)]
pub(crate) struct RoleQuery;

#[Object]
impl RoleQuery {
    /// Every role and who holds it now (admin). Errors: `FORBIDDEN`.
    async fn roles(&self, ctx: &Context<'_>) -> Result<Vec<RoleHolder>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let found = current_holders(ctx).await?;
        let mut roles: Vec<RoleHolder> = Vec::new();
        for holder in found {
            let Some(partition) = holder.partition else {
                roles.push(RoleHolder {
                    role: holder.role,
                    instance: holder.instance,
                    since: holder.since,
                    partitions: Vec::new(),
                });
                continue;
            };
            let held = PartitionHolder {
                partition: i32::from(partition),
                instance: holder.instance,
            };
            match roles.last_mut() {
                Some(last) if last.role == holder.role => last.partitions.push(held),
                _ => roles.push(RoleHolder {
                    role: holder.role,
                    instance: None,
                    since: None,
                    partitions: vec![held],
                }),
            }
        }
        Ok(roles)
    }

    /// The live instances, oldest first, with the roles and partitions each holds (admin).
    /// Errors: `FORBIDDEN`.
    async fn instances(&self, ctx: &Context<'_>) -> Result<Vec<Instance>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let live = live_instances(ctx.data_unchecked::<PgPool>()).await?;
        let found = current_holders(ctx).await?;
        Ok(live
            .into_iter()
            .map(|instance| {
                let mine = found.iter().filter(|h| h.pid == Some(instance.pid));
                let mut partitions: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                let mut roles = Vec::new();
                for holder in mine {
                    match holder.partition {
                        Some(p) => partitions
                            .entry(&holder.role)
                            .or_default()
                            .push(i32::from(p)),
                        None => roles.push(holder.role.clone()),
                    }
                }
                Instance {
                    name: instance.name,
                    pid: instance.pid,
                    since: instance.since,
                    roles,
                    partitions: partitions
                        .into_iter()
                        .map(|(role, partitions)| HeldPartitions {
                            role: role.to_owned(),
                            partitions,
                        })
                        .collect(),
                }
            })
            .collect())
    }
}

/// Who holds each role (and partition) this instance knows of.
async fn current_holders(ctx: &Context<'_>) -> Result<Vec<Holder>, ApiError> {
    let roles = ctx.data_unchecked::<Roles>().described();
    Ok(holders(ctx.data_unchecked::<PgPool>(), &roles).await?)
}
