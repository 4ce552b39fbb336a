//! What the fault tests share: the service as a process, a careful client, mixed load, and
//! the checks that must hold after a fault. Databases, the provider emulator, the webhook
//! receiver and the TCP proxy are the API suite's own.

#[path = "../api/support/database.rs"]
mod database;
#[path = "../api/support/emulator.rs"]
mod emulator;
#[path = "../api/support/eventually.rs"]
mod eventually;
#[path = "../api/support/proxy.rs"]
mod proxy;
#[path = "../api/support/receiver.rs"]
#[expect(
    dead_code,
    reason = "the API suite's receiver; answering with faults is not needed here"
)]
mod receiver;

pub mod checks;
pub mod client;
pub mod load;
mod server;
pub mod subscriber;

pub use database::TestDb;
pub use emulator::spawn_emulator;
pub use eventually::eventually;
pub use proxy::Proxy;
pub use receiver::{Behaviour, Received, Receiver};
pub use server::Server;

/// True when the long variants were asked for (`CHRONICLE_FAULTS_LONG=1`).
pub fn long() -> bool {
    std::env::var("CHRONICLE_FAULTS_LONG").is_ok_and(|v| v == "1")
}
