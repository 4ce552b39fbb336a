//! Integration tests against a real PostgreSQL: each test gets its own database.
#![expect(clippy::expect_used, reason = "in tests, a failed step fails the test")]
#![expect(
    unreachable_pub,
    reason = "test support items are shared across this binary's modules"
)]

mod analysts;
mod analytics;
mod archive;
mod audit;
mod batch_actions;
mod batching;
mod bench;
mod cli;
mod delivery;
mod driver;
mod group_commit;
mod history;
mod http;
mod idempotency;
mod list_filters;
mod log_order;
mod not_served;
mod operations;
mod parked;
mod projections;
mod projector_sets;
mod provider;
mod pseudonyms;
mod query_jobs;
mod rabbitmq;
mod racing_starts;
mod read_your_writes;
mod rebuilds;
mod replica;
mod request_streams;
mod schema_file;
mod security;
mod simulations;
mod store;
mod subscriptions;
mod support;
mod telemetry;
mod transfers;
