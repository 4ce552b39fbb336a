//! The GraphQL API: schema roots, types, resolvers and the one error mapping. Knows nothing
//! of axum; `crate::http` serves it.

mod analytics;
mod audit;
mod batches;
mod caller;
mod clients;
mod deliveries;
mod dicom_servers;
mod error;
mod error_codes;
mod event_log;
mod history;
mod limits;
mod mutation_metrics;
mod operation;
mod outcome;
mod pagination;
mod projections;
mod query_jobs;
mod requests;
mod roles;
mod schema;
mod simulations;
mod subjects;
mod transfer_updates;
mod transfers;
mod transitions;
mod updates;

pub use caller::Caller;
pub use error::ApiError;
pub use operation::is_query;
pub use schema::{build_schema, sdl, ApiServices, ChronicleSchema};
