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

/// How an instance runs `projectors`, one runner and one role per set: each inline
/// projector alone (its pages take the log lock, which appends hold, so they must stay
/// short), and all the others together, one transaction per page for all of them.
pub fn sets(projectors: Vec<Arc<dyn Projector>>) -> Vec<Vec<Arc<dyn Projector>>> {
    let inline = inline();
    let (alone, together): (Vec<_>, Vec<_>) = projectors
        .into_iter()
        .partition(|p| inline.iter().any(|i| i.name() == p.name()));
    let mut sets: Vec<Vec<Arc<dyn Projector>>> = alone.into_iter().map(|p| vec![p]).collect();
    if !together.is_empty() {
        sets.push(together);
    }
    sets
}

/// The set of `projectors` (see [`sets`]) that holds the projector `name`.
pub fn set_of(projectors: Vec<Arc<dyn Projector>>, name: &str) -> Option<Vec<Arc<dyn Projector>>> {
    sets(projectors)
        .into_iter()
        .find(|set| set.iter().any(|p| p.name() == name))
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
