//! What every integration test needs: a fresh database, a running app, a websocket client and
//! a small test aggregate that exercises the mechanisms without a business domain.

mod app;
mod database;
pub mod dicom_files;
mod emulator;
mod ledger;
mod orthanc;
mod proxy;
mod receiver;
mod ws;

pub use app::{context as app_context, vault, TestApp, ADMIN_KEY};
pub use database::TestDb;
pub use emulator::spawn_emulator;
pub use ledger::{Ledger, LedgerCommand};
pub use orthanc::Orthanc;
pub use proxy::Proxy;
pub use receiver::{Behaviour, Receiver};
pub use ws::Subscription;

use std::future::Future;
use std::time::Duration;

/// Polls `check` until it returns `Some`, or panics after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
