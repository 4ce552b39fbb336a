//! OpenTelemetry: with an OTLP endpoint configured, the binary exports its spans there
//! (OTLP over HTTP, protobuf) and flushes them before it exits.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;

use crate::support::TestDb;

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn collect(State(received): State<Received>, headers: HeaderMap, body: Bytes) {
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    received.lock().expect("lock").push((content_type, body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_otlp_endpoint() {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let collector = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, collector).await });

    let db = TestDb::new().await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .arg("migrate")
        .env("DATABASE_URL", db.url())
        .env(
            "CHRONICLE_OTLP_ENDPOINT",
            format!("http://{address}/v1/traces"),
        )
        .env("RUST_LOG", "info")
        .output()
        .await
        .expect("run chronicle");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let received = received.lock().expect("lock").clone();
    assert!(!received.is_empty(), "no export reached the collector");
    let (content_type, body) = &received[0];
    assert_eq!(content_type, "application/x-protobuf");
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"chronicle"),
        "the service and span name are in the export"
    );
    assert!(
        contains(b"migrate"),
        "the command's span attribute is in the export"
    );
}
