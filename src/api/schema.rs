//! The schema's roots, merged from each area's query, mutation and subscription objects.

use async_graphql::{EmptyMutation, MergedObject, MergedSubscription, Schema};
use sqlx::PgPool;

use super::event_log::{EventLogQuery, EventLogSubscription};
use super::projections::ProjectionQuery;
use crate::log::{LogReader, LogWaker};

/// All queries.
#[derive(MergedObject, Default)]
pub struct Query(EventLogQuery, ProjectionQuery);

/// All subscriptions.
#[derive(MergedSubscription, Default)]
pub struct Subscription(EventLogSubscription);

/// The served schema.
pub type ChronicleSchema = Schema<Query, EmptyMutation, Subscription>;

/// Builds the schema with the shared services resolvers read from the context.
pub fn build_schema(pool: PgPool, reader: LogReader, waker: LogWaker) -> ChronicleSchema {
    Schema::build(Query::default(), EmptyMutation, Subscription::default())
        .data(pool)
        .data(reader)
        .data(waker)
        .finish()
}

/// The schema's SDL without services, for `chronicle schema` and the drift test.
pub fn sdl() -> String {
    Schema::build(Query::default(), EmptyMutation, Subscription::default())
        .finish()
        .sdl()
}
