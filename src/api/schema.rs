//! The schema's roots, merged from each area's query, mutation and subscription objects.

use async_graphql::{MergedObject, MergedSubscription, Schema, SchemaBuilder};
use std::sync::Arc;

use sqlx::PgPool;

use super::analytics::AnalyticsQuery;
use super::audit::AuditQuery;
use super::batches::{BatchMutation, BatchQuery};
use super::clients::{ClientMutation, ClientQuery};
use super::deliveries::{DeliveryMutation, DeliveryQuery};
use super::dicom_servers::{DicomServerMutation, DicomServerQuery};
use super::error_codes::DefaultErrorCodes;
use super::event_log::{EventLogQuery, EventLogSubscription};
use super::history::HistoryQuery;
use super::limits::DocumentBudget;
use super::mutation_metrics::MutationMetrics;
use super::projections::{ProjectionMutation, ProjectionQuery};
use super::query_jobs::{QueryJobMutation, QueryJobQuery};
use super::requests::{RequestMutation, RequestQuery};
use super::roles::RoleQuery;
use super::simulations::{SimulationMutation, SimulationQuery, SimulationSubscription};
use super::subjects::SubjectMutation;
use super::transfer_updates::TransferSubscription;
use super::transfers::{TransferMutation, TransferQuery};
use super::transitions::TransitionQuery;
use super::updates::LlmSubscription;
use crate::command::Commands;
use crate::delivery::WebhookSecrets;
use crate::llm::{LlmActions, Submitter};
use crate::log::{LiveLog, LogReader};
use crate::privacy::Vault;
use crate::projection::{Projectors, Roles};
use crate::reads::Reads;
use crate::security::{EgressPolicy, KeyHasher, KnownKeys, RateLimiter};
use crate::simulation::SimulationActions;
use crate::transfer::TransferActions;

/// All queries.
#[derive(MergedObject, Default)]
pub struct Query(
    EventLogQuery,
    ProjectionQuery,
    RoleQuery,
    RequestQuery,
    BatchQuery,
    TransitionQuery,
    DeliveryQuery,
    SimulationQuery,
    AuditQuery,
    HistoryQuery,
    AnalyticsQuery,
    TransferQuery,
    DicomServerQuery,
    QueryJobQuery,
    ClientQuery,
);

/// All mutations.
#[derive(MergedObject, Default)]
pub struct Mutation(
    RequestMutation,
    BatchMutation,
    DeliveryMutation,
    SimulationMutation,
    TransferMutation,
    DicomServerMutation,
    QueryJobMutation,
    ClientMutation,
    SubjectMutation,
    ProjectionMutation,
);

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(
    EventLogSubscription,
    LlmSubscription,
    SimulationSubscription,
    TransferSubscription,
);

/// The served schema.
pub type ChronicleSchema = Schema<Query, Mutation, Subscription>;

/// The services resolvers read from the context.
pub struct ApiServices {
    /// The database (the primary): for commands and the admin views of live state.
    pub pool: PgPool,
    /// The primary's log, for admin commands that read it.
    pub reader: LogReader,
    /// Wakes log tails.
    pub live: LiveLog,
    /// Accepts requests into batches.
    pub submitter: Submitter,
    /// Owner actions on batches and requests.
    pub actions: LlmActions,
    /// Webhook signing secrets.
    pub secrets: Arc<WebhookSecrets>,
    /// Owner actions on simulations.
    pub simulations: SimulationActions,
    /// Owner and admin actions on transfers.
    pub transfers: TransferActions,
    /// Mutations per client.
    pub rate_limiter: RateLimiter,
    /// Hashes the keys admins issue.
    pub hasher: KeyHasher,
    /// Names data subjects.
    pub vault: Vault,
    /// Where webhooks may go.
    pub egress: EgressPolicy,
    /// The command path, for admin commands.
    pub commands: Commands,
    /// The keys the authenticator keeps: a revocation forgets its key at once.
    pub known_keys: KnownKeys,
    /// The projectors the instance runs.
    pub projectors: Projectors,
    /// The roles the instance claims.
    pub roles: Roles,
}

/// Deepest accepted query: GraphiQL's introspection query needs 13, our own types 7.
const MAX_DEPTH: usize = 20;
/// Costliest accepted query: each field costs one, and a list field its page size times its
/// items' cost (a full page of 1,000 items of 20 fields passes; a page of pages does not).
const MAX_COMPLEXITY: usize = 25_000;

fn builder() -> SchemaBuilder<Query, Mutation, Subscription> {
    Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .extension(DefaultErrorCodes)
    .extension(DocumentBudget)
    // Inside the budget's parse (it sees the document even when the budget refuses it).
    .extension(MutationMetrics)
    .limit_depth(MAX_DEPTH)
    .limit_complexity(MAX_COMPLEXITY)
}

/// Builds the schema with the services resolvers read from the context.
pub fn build_schema(services: ApiServices) -> ChronicleSchema {
    builder()
        .data(services.pool.clone())
        // Where read models and the log are read: the primary, unless a query's request
        // names a replica.
        .data(Reads {
            pool: services.pool.clone(),
            log: services.reader.clone(),
        })
        .data(services.reader)
        .data(services.live)
        .data(services.submitter)
        .data(services.actions)
        .data(services.secrets)
        .data(services.simulations)
        .data(services.transfers)
        .data(services.rate_limiter)
        .data(services.hasher)
        .data(services.vault)
        .data(services.egress)
        .data(services.commands)
        .data(services.known_keys)
        .data(services.projectors)
        .data(services.roles)
        .finish()
}

/// The schema's SDL without services, for `chronicle schema` and the drift test.
pub fn sdl() -> String {
    builder().finish().sdl()
}
