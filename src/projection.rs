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
