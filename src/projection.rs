//! Running projectors: one active runner per projector across all instances, exactly-once
//! page application, rebuilds from zero and status for operators; and the roles (projectors,
//! workers) one instance at a time holds.

mod consistency;
mod leader;
mod runner;

use std::sync::Arc;

use chronicle_projections::aggregate_index::AggregateIndex;
use chronicle_projections::analytics::{BatchAnalytics, RequestAnalytics, SimulationAnalytics};
use chronicle_projections::batches::Batches;
use chronicle_projections::delivery_attempts::DeliveryAttempts;
use chronicle_projections::queries::Queries;
use chronicle_projections::request_streams::RequestStreams;
use chronicle_projections::requests::Requests;
use chronicle_projections::simulations::Simulations;
use chronicle_projections::transfers::Transfers;
use chronicle_projections::transitions::Transitions;
use chronicle_projections::Projector;

pub use consistency::{NotYet, ReadModels};
pub use leader::{Role, Roles};
pub use runner::{ProjectionRunner, Rebuild, RunnerError, RunnerSettings};

/// The projectors applied in the append's transaction as well (see
/// [`crate::store::InlineProjectors`]): the request streams a batch's events start.
pub fn inline() -> Vec<Arc<dyn Projector>> {
    vec![Arc::new(RequestStreams)]
}

/// Projectors an instance runs together: one runner, one role, one transaction per page.
pub struct ProjectorSet {
    /// The role that lets an instance run the set.
    pub role: String,
    /// Its projectors.
    pub projectors: Vec<Arc<dyn Projector>>,
}

/// The analytics projectors: heavier per event, and read by nobody waiting on a command,
/// so they run as a set of their own and never delay the read models.
const ANALYTICS: [&str; 3] = [
    "analytics_requests",
    "analytics_batches",
    "analytics_simulations",
];

/// How an instance runs `projectors`: each inline projector alone (role
/// `projection.<name>`: its pages take the log lock, which appends hold, so they must stay
/// short), the analytics together (`projections.analytics`), and the read models together
/// (`projections`).
pub fn sets(projectors: Vec<Arc<dyn Projector>>) -> Vec<ProjectorSet> {
    let inline = inline();
    let mut sets = Vec::new();
    let (mut analytics, mut read_models) = (Vec::new(), Vec::new());
    for projector in projectors {
        if inline.iter().any(|i| i.name() == projector.name()) {
            sets.push(ProjectorSet {
                role: format!("projection.{}", projector.name()),
                projectors: vec![projector],
            });
        } else if ANALYTICS.contains(&projector.name()) {
            analytics.push(projector);
        } else {
            read_models.push(projector);
        }
    }
    for (role, projectors) in [
        ("projections", read_models),
        ("projections.analytics", analytics),
    ] {
        if !projectors.is_empty() {
            sets.push(ProjectorSet {
                role: role.to_owned(),
                projectors,
            });
        }
    }
    sets
}

/// The set of `projectors` (see [`sets`]) that holds the projector `name`.
pub fn set_of(projectors: Vec<Arc<dyn Projector>>, name: &str) -> Option<ProjectorSet> {
    sets(projectors)
        .into_iter()
        .find(|set| set.projectors.iter().any(|p| p.name() == name))
}

/// The projectors every instance runs.
pub fn standard() -> Vec<Arc<dyn Projector>> {
    vec![
        Arc::new(AggregateIndex),
        Arc::new(RequestStreams),
        Arc::new(Requests),
        Arc::new(Batches),
        Arc::new(Transitions),
        Arc::new(DeliveryAttempts),
        Arc::new(Simulations),
        Arc::new(Transfers),
        Arc::new(Queries),
        Arc::new(RequestAnalytics),
        Arc::new(BatchAnalytics),
        Arc::new(SimulationAnalytics),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_projector_runs_in_one_set_inline_ones_alone_analytics_apart() {
        let sets = sets(standard());
        let roles: Vec<(&str, Vec<&str>)> = sets
            .iter()
            .map(|set| {
                let names = set.projectors.iter().map(|p| p.name()).collect();
                (set.role.as_str(), names)
            })
            .collect();
        assert_eq!(
            roles[0],
            ("projection.request_streams", vec!["request_streams"])
        );
        assert_eq!(roles[1].0, "projections");
        assert!(roles[1].1.contains(&"requests") && roles[1].1.contains(&"aggregate_index"));
        assert_eq!(roles[2], ("projections.analytics", ANALYTICS.to_vec()));
        let placed: usize = sets.iter().map(|set| set.projectors.len()).sum();
        assert_eq!(placed, standard().len());
    }
}
