//! What every integration test needs: a fresh database, a running app, a websocket client and
//! a small test aggregate that exercises the mechanisms without a business domain.

mod app;
mod database;
pub mod dicom_files;
mod emulator;
mod eventually;
mod ledger;
mod orthanc;
mod proxy;
mod receiver;
mod replica;
mod scrape;
mod ws;

pub use app::{context as app_context, vault, TestApp, ADMIN_KEY};
pub use database::TestDb;
pub use emulator::spawn_emulator;
pub use eventually::eventually;
pub use ledger::{Ledger, LedgerCommand};
pub use orthanc::Orthanc;
pub use proxy::Proxy;
pub use receiver::{Behaviour, Receiver};
pub use replica::Replica;
pub use scrape::Scrape;
pub use ws::Subscription;

/// The `code` extension of a response's first error (empty without one).
pub fn error_code(response: &serde_json::Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}
