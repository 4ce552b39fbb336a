//! Bounded work per document and before authentication: a fragment bomb is refused before
//! it expands, mutations are charged at any fragment depth and bulk items per item, and a
//! caller without a key is refused before its body is read.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{error_code as code, TestApp, TestDb};

/// Ten spreads per fragment, eight levels deep: under a kilobyte, 10^8 selections expanded.
fn fragment_bomb(operation: &str, leaf: &str) -> String {
    let root = if operation == "mutation" {
        "Mutation"
    } else {
        "Query"
    };
    let mut bomb = format!("{operation} {{ ...F0 }}");
    for level in 0..8 {
        let spreads = format!("...F{} ", level + 1).repeat(10);
        bomb.push_str(&format!(" fragment F{level} on {root} {{ {spreads}}}"));
    }
    bomb.push_str(&format!(" fragment F8 on {root} {{ {leaf} }}"));
    bomb
}

const FLUSH: &str = "flushBatch(batchId: \"00000000-0000-7000-8000-000000000000\") { version }";

#[tokio::test]
async fn a_fragment_bomb_is_refused_before_it_expands_and_the_server_goes_on() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "budgets").await;
    for bomb in [
        fragment_bomb("query", "me { clientId }"),
        fragment_bomb("mutation", FLUSH),
    ] {
        assert!(bomb.len() < 1024, "{}", bomb.len());
        let refused = app.graphql(&bomb, json!({})).await;
        assert_eq!(code(&refused), "LIMIT_EXCEEDED", "{refused}");
    }
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type LIKE 'Batch%'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(events, 0, "nothing ran");
    let me = app.graphql("{ me { clientId } }", json!({})).await;
    assert_eq!(me["data"]["me"]["clientId"], "admin", "{me}");
    app.stop().await;
}

#[tokio::test]
async fn mutations_deep_in_fragments_and_bulk_items_are_charged() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_configured(&db, "budgets", |c| {
        c.security.rate_limit_per_sec = 1;
        c.security.rate_limit_burst = 5;
        c.security.rate_limit_items_per_sec = 1;
    })
    .await;
    let key = app.client_key("acme", "CLIENT").await;
    // Six mutations eleven fragment levels down exceed a burst of five.
    let mut deep = String::from("mutation { ...F0 }");
    for level in 0..11 {
        deep.push_str(&format!(
            " fragment F{level} on Mutation {{ ...F{} }}",
            level + 1
        ));
    }
    let six: Vec<String> = (0..6).map(|n| format!("m{n}: {FLUSH}")).collect();
    deep.push_str(&format!(
        " fragment F11 on Mutation {{ {} }}",
        six.join(" ")
    ));
    let refused = app.graphql_as(&key, &deep, json!({})).await;
    assert_eq!(code(&refused), "RATE_LIMITED", "{refused}");

    // A bulk of up to 50,000 passes a rested client; what exceeds the rest waits.
    let submit =
        "mutation($r: [SubmitRequestInput!]!) { submitRequests(requests: $r) { requestId } }";
    let items = |n: usize| -> Value {
        (0..n)
            .map(|i| {
                json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                             "model": "m", "body": { "model": "m", "messages": [] },
                             "delivery": { "poll": true } })
            })
            .collect()
    };
    let bulk = app
        .graphql_as(&key, submit, json!({ "r": items(1_000) }))
        .await;
    assert!(bulk["errors"].is_null(), "{bulk}");
    let big = app
        .graphql_as(&key, submit, json!({ "r": items(49_999) }))
        .await;
    assert_eq!(
        code(&big),
        "RATE_LIMITED",
        "items are charged per item: {big}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_caller_without_a_key_is_refused_before_its_body_is_read() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "budgets").await;
    let mut socket = tokio::net::TcpStream::connect(&app.address)
        .await
        .expect("connect");
    // A 60 MiB body is announced; only its first megabyte is ever sent.
    let head = format!(
        "POST /graphql HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        app.address,
        60 * 1024 * 1024
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    socket
        .write_all(&vec![b' '; 1024 * 1024])
        .await
        .expect("first megabyte");
    let mut answer = vec![0_u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut answer))
        .await
        .expect("an answer before the body ends")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(answer.contains("UNAUTHENTICATED"), "{answer}");
    app.stop().await;
}
