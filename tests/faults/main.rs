//! Fault tests: the service as a child process, broken on purpose — killed under load, cut
//! off from its database and its dependencies, crowded on one aggregate, read slowly — and
//! checked afterwards for lost, doubled or diverging state.
//!
//! Run alone with `cargo nextest run --test faults`; `CHRONICLE_FAULTS_LONG=1` runs the long
//! variants (more kills, longer outages). Each test has its own database and servers.
#![expect(clippy::expect_used, reason = "in tests, a failed step fails the test")]
#![expect(
    unreachable_pub,
    reason = "test support items are shared across this binary's modules"
)]

mod concurrency;
mod crash;
mod database;
mod dependencies;
mod rebuild;
mod scale_out;
mod slow_subscriber;
mod support;
