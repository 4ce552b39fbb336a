//! Chronicle, the service: configuration, the event store wiring, the gap-free log, the
//! command path, projection runners and the GraphQL API.

pub mod api;
pub mod archive;
pub mod audit;
pub mod cli;
pub mod command;
pub mod config;
pub mod db;
pub mod delivery;
pub mod http;
pub mod llm;
pub mod log;
pub mod metrics;
pub mod privacy;
pub mod projection;
pub mod provider;
pub mod retry_rules;
pub mod security;
pub mod simulation;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transfer;
