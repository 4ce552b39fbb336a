//! Running projectors: one active runner per projector across all instances, exactly-once
//! page application, rebuilds beside the live tables and status for operators; and the roles (projectors,
//! workers) one instance at a time holds.

mod consistency;
mod leader;
mod operate;
mod rebuild;
mod runner;

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::aggregate_index::AggregateIndex;
use chronicle_projections::analytics::{BatchAnalytics, RequestAnalytics, SimulationAnalytics};
use chronicle_projections::batches::Batches;
use chronicle_projections::delivery_attempts::DeliveryAttempts;
use chronicle_projections::queries::Queries;
use chronicle_projections::requests::Requests;
use chronicle_projections::simulations::Simulations;
use chronicle_projections::transfers::Transfers;
use chronicle_projections::transitions::Transitions;
use chronicle_projections::Projector;

pub use consistency::{NotYet, ReadModels};
pub use leader::{
    holders, live_instances, partition_of, Holder, InstanceCount, Lease, LiveInstance, Role, Roles,
    PARTITIONS,
};
pub use operate::{resolve_parked, ParkedAction, ParkedError};
pub use rebuild::{
    cancel as cancel_rebuild, RebuildError, RebuildProgress, Rebuilder, REBUILD_ROLE,
};
pub use runner::{ProjectionRunner, RunnerError, RunnerSettings};

/// The projectors applied in the group commit's transaction as well (see
/// [`crate::store::InlineProjectors`]): every read model a caller reads back.
pub fn inline() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(AggregateIndex),
        Arc::new(Requests),
        Arc::new(Batches),
        Arc::new(Transitions),
        Arc::new(DeliveryAttempts),
        Arc::new(Simulations),
        Arc::new(Transfers),
        Arc::new(Queries),
    ]
}

/// Projectors an instance runs together: one runner, one role, one transaction per page.
pub struct ProjectorSet {
    /// The role that lets an instance run the set.
    pub role: String,
    /// Its projectors.
    pub projectors: Vec<Arc<dyn Projector>>,
    /// How long a woken runner lets commits gather before it reads: one page (one
    /// transaction) then carries many commits' events instead of one each.
    pub gather: Duration,
}

/// The inline set's runner only catches up (after a rebuild or an upgrade): a short gather.
const INLINE_GATHER: Duration = Duration::from_millis(5);

/// The analytics are read by nobody waiting on a command: under load, a page a quarter of a
/// second costs one transaction for every command of that quarter.
const ANALYTICS_GATHER: Duration = Duration::from_millis(250);

/// How an instance runs `projectors`: the inline ones together (role `projections`: they
/// catch up after a rebuild or an upgrade; their pages take the log lock, which appends
/// hold), the rest, the analytics, together (`projections.analytics`: heavier per event and
/// read by nobody waiting on a command).
pub fn sets(projectors: Vec<Arc<dyn Projector>>) -> Vec<ProjectorSet> {
    let inline = inline();
    let (read_models, analytics): (Vec<_>, Vec<_>) = projectors
        .into_iter()
        .partition(|projector| inline.iter().any(|i| i.name() == projector.name()));
    [
        ("projections", read_models, INLINE_GATHER),
        ("projections.analytics", analytics, ANALYTICS_GATHER),
    ]
    .into_iter()
    .filter(|(_, projectors, _)| !projectors.is_empty())
    .map(|(role, projectors, gather)| ProjectorSet {
        role: role.to_owned(),
        projectors,
        gather,
    })
    .collect()
}

/// The set of `projectors` (see [`sets`]) that holds the projector `name`.
pub fn set_of(projectors: Vec<Arc<dyn Projector>>, name: &str) -> Option<ProjectorSet> {
    sets(projectors)
        .into_iter()
        .find(|set| set.projectors.iter().any(|p| p.name() == name))
}

/// The projectors an instance runs, for the API's operators' actions.
#[derive(Clone)]
pub struct Projectors(Arc<[Arc<dyn Projector>]>);

impl Projectors {
    /// These projectors.
    pub fn new(projectors: &[Arc<dyn Projector>]) -> Self {
        Self(projectors.into())
    }

    /// All of them.
    pub fn all(&self) -> &[Arc<dyn Projector>] {
        &self.0
    }

    /// The one named `name`.
    pub fn find(&self, name: &str) -> Option<&Arc<dyn Projector>> {
        self.0.iter().find(|p| p.name() == name)
    }
}

/// The projectors every instance runs.
pub fn standard() -> Vec<Arc<dyn Projector>> {
    let mut all = inline();
    all.extend([
        Arc::new(RequestAnalytics) as Arc<dyn Projector>,
        Arc::new(BatchAnalytics),
        Arc::new(SimulationAnalytics),
    ]);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projector_runs_in_one_set_read_models_inline_analytics_apart() {
        let sets = sets(standard());
        let roles: Vec<(&str, Vec<&str>)> = sets
            .iter()
            .map(|set| {
                let names = set.projectors.iter().map(|p| p.name()).collect();
                (set.role.as_str(), names)
            })
            .collect();
        let inline: Vec<&str> = inline().iter().map(|p| p.name()).collect();
        assert_eq!(roles[0], ("projections", inline));
        assert_eq!(
            roles[1],
            (
                "projections.analytics",
                vec![
                    "analytics_requests",
                    "analytics_batches",
                    "analytics_simulations"
                ]
            )
        );
        let placed: usize = sets.iter().map(|set| set.projectors.len()).sum();
        assert_eq!(placed, standard().len());
    }
}
