//! The provider emulator on a random port.

use chronicle::provider::{Emulator, Faults};

/// Starts an emulator with `faults`; returns it and its base URL.
pub async fn spawn_emulator(faults: Faults) -> (Emulator, String) {
    let emulator = Emulator::new(faults);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let router = emulator.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (emulator, format!("http://{address}"))
}
