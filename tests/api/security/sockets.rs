//! Open websockets answer to their key's current state and run a bounded number of
//! operations.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Subscription, TestApp, TestDb};

const EVENTS: &str = "subscription { events { cursor eventType } }";
/// A live subscription that stays silent.
const QUIET: &str = "subscription { events(aggregateTypes: [\"None\"]) { cursor } }";
const ME: &str = "{ me { clientId } }";

async fn revoke(app: &TestApp, client_id: &str) {
    let listed = app
        .graphql(
            "query($c: String!) { client(id: $c) { keys { keyId } } }",
            json!({ "c": client_id }),
        )
        .await;
    let key_id = listed["data"]["client"]["keys"][0]["keyId"].clone();
    let revoked = app
        .graphql(
            "mutation($c: String!, $k: String!) { revokeKey(clientId: $c, keyId: $k) { version } }",
            json!({ "c": client_id, "k": key_id }),
        )
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
}

fn code(message: &Value) -> &str {
    message["payload"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_revoked_keys_open_sockets_are_closed_and_run_nothing_more() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "sockets").await;
    let key = app.client_key("acme", "CLIENT").await;
    let url = format!("ws://{}/graphql", app.address);
    let mut streaming = Subscription::start_as(&url, &key, EVENTS, json!({})).await;
    let mut idle = Subscription::start_as(&url, &key, ME, json!({})).await;
    let me = idle.next_data(Duration::from_secs(5)).await;
    assert_eq!(me, Some(json!({ "me": { "clientId": "acme" } })));

    revoke(&app, "acme").await;

    // An operation sent right after the revocation is refused, before the log's news of it
    // arrives: the key is checked again for every operation.
    idle.subscribe("late", ME).await;
    assert_eq!(idle.close_code(Duration::from_secs(5)).await, Some(4403));
    // A socket that only streams is closed when the revocation reaches this instance.
    assert_eq!(
        streaming.close_code(Duration::from_secs(5)).await,
        Some(4403)
    );
    // The admin's sockets are untouched.
    let mut admin = Subscription::start(&url, ME, json!({})).await;
    let me = admin.next_data(Duration::from_secs(5)).await;
    assert_eq!(me, Some(json!({ "me": { "clientId": "admin" } })));
    app.stop().await;
}

#[tokio::test]
async fn a_socket_runs_a_bounded_number_of_operations_and_ids_are_unique() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_configured(&db, "sockets", |c| c.security.ws_max_operations = 3).await;
    let url = format!("ws://{}/graphql", app.address);
    // Operation "1" is the first live subscription; two more fill the socket.
    let mut socket = Subscription::start(&url, QUIET, json!({})).await;
    socket.subscribe("2", QUIET).await;
    socket.subscribe("3", QUIET).await;
    socket.subscribe("4", ME).await;
    let refused = socket
        .next_message(Duration::from_secs(5))
        .await
        .expect("an answer");
    assert_eq!(
        (refused["type"].as_str(), refused["id"].as_str()),
        (Some("error"), Some("4")),
        "{refused}"
    );
    assert_eq!(code(&refused), "LIMIT_EXCEEDED", "{refused}");
    // Completing one frees its place.
    socket.complete("1").await;
    let done = socket.next_message(Duration::from_secs(5)).await;
    assert_eq!(done, Some(json!({ "type": "complete", "id": "1" })));
    socket.subscribe("5", ME).await;
    let me = socket.next_data(Duration::from_secs(5)).await;
    assert_eq!(me, Some(json!({ "me": { "clientId": "admin" } })));
    // A subscribe that reuses a running id closes the socket, as graphql-transport-ws says.
    socket.subscribe("2", QUIET).await;
    assert_eq!(socket.close_code(Duration::from_secs(5)).await, Some(4409));
    app.stop().await;
}
