//! Analytics: projection tables in schema `analytics`, meant to be queried with SQL by the
//! `chronicle_analytics` role (see the README's section for analysts). Each is a projector
//! like any other: rebuildable from zero, with the same result as built incrementally.

mod batches;
mod requests;
mod simulations;

pub use batches::BatchAnalytics;
pub use requests::RequestAnalytics;
pub use simulations::SimulationAnalytics;

use chrono::{DateTime, NaiveDate, Utc};

/// The UTC day of a time.
fn day(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

/// A count or sum as the `bigint` it is stored in.
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
