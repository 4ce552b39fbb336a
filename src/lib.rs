//! Chronicle, the service: configuration, the event store wiring, the gap-free log, the
//! command path, projection runners and the GraphQL API.
// The merged GraphQL query root resolves every field in one async state machine; its layout
// needs more than the default 128 levels.
#![recursion_limit = "256"]

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
pub mod reads;
pub mod retry_rules;
pub mod security;
pub mod simulation;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transfer;

/// mimalloc serves every allocation of every binary linking this crate: under concurrent
/// GraphQL load glibc's allocator took over a third of the service's CPU (`perf`, W7), most of
/// it in `_int_malloc` and `malloc_consolidate`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
