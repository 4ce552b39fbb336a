//! Submitting requests into batches over GraphQL: one open batch per (endpoint, model),
//! limits open successors, bad input writes nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::request::RequestSpec;
use chronicle_aggregates::Delivery;
use futures::future::join_all;
use serde_json::{json, Value};

use crate::support::{eventually, TestApp, TestDb};

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId batchId customId } }";
const BATCHES: &str = "{ batches(first: 1000) { edges { node {
    id model status requestCount sizeBytes closeReason successor } } } }";

fn item(custom_id: &str, model: &str) -> Value {
    json!({
        "customId": custom_id,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": { "model": model, "messages": [{ "role": "user", "content": custom_id }] },
        "delivery": { "poll": true },
    })
}

fn jsonl_bytes(item: &Value) -> i64 {
    let spec = RequestSpec::parse(
        item["customId"].as_str().unwrap_or_default().into(),
        "/v1/chat/completions",
        item["model"].as_str().unwrap_or_default().into(),
        item["body"].clone(),
        Ok(Delivery::Poll),
    )
    .expect("valid item");
    spec.jsonl_bytes() as i64
}

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Client'")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// The batches once the read model holds `requests` requests in them.
async fn batches_holding(app: &TestApp, requests: i64) -> Vec<Value> {
    eventually(Duration::from_secs(30), "batches read model", || async {
        let response = app.graphql(BATCHES, json!({})).await;
        let batches: Vec<Value> = response["data"]["batches"]["edges"]
            .as_array()?
            .iter()
            .map(|edge| edge["node"].clone())
            .collect();
        let total: i64 = batches
            .iter()
            .filter_map(|b| b["requestCount"].as_i64())
            .sum();
        (total == requests).then_some(batches)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_clients_fill_exactly_one_batch_per_endpoint_and_model() {
    let db = TestDb::new().await;
    let app = Arc::new(TestApp::spawn(&db, "batching").await);
    let clients = (0..8).map(|client| {
        let app = Arc::clone(&app);
        async move {
            let items: Vec<Value> = (0..125)
                .map(|i| {
                    item(
                        &format!("c{client}-{i}"),
                        if i % 2 == 0 { "gpt-a" } else { "gpt-b" },
                    )
                })
                .collect();
            let response = app.graphql(SUBMIT_MANY, json!({ "requests": items })).await;
            assert!(response["errors"].is_null(), "{response}");
            items
        }
    });
    let submitted: Vec<Value> = join_all(clients).await.into_iter().flatten().collect();

    let batches = batches_holding(&app, 1000).await;
    assert_eq!(batches.len(), 2, "{batches:?}");
    for model in ["gpt-a", "gpt-b"] {
        let batch = batches
            .iter()
            .find(|b| b["model"] == model)
            .expect("batch per model");
        let of_model: Vec<&Value> = submitted.iter().filter(|i| i["model"] == model).collect();
        let expected_bytes: i64 = of_model.iter().map(|i| jsonl_bytes(i)).sum();
        assert_eq!(batch["requestCount"], of_model.len());
        assert_eq!(batch["sizeBytes"], expected_bytes);
        assert_eq!(batch["status"], "building");
    }
    let requests: i64 = eventually(Duration::from_secs(30), "requests read model", || async {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM requests WHERE status = 'pending'")
                .fetch_one(&app.pool)
                .await
                .ok()?;
        (count == 1000).then_some(count)
    })
    .await;
    assert_eq!(requests, 1000);
    Arc::try_unwrap(app)
        .ok()
        .expect("app still shared")
        .stop()
        .await;
}

#[tokio::test]
async fn a_full_batch_closes_and_the_rest_opens_its_successor() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_configured(&db, "limits", |c| c.batch_max_requests = 10).await;
    let items: Vec<Value> = (0..25).map(|i| item(&format!("r{i}"), "m")).collect();
    let response = app.graphql(SUBMIT_MANY, json!({ "requests": items })).await;
    let accepted = response["data"]["submitRequests"]
        .as_array()
        .expect("accepted")
        .clone();
    assert_eq!(accepted.len(), 25, "{response}");
    let batch_ids: Vec<&str> = accepted
        .iter()
        .filter_map(|a| a["batchId"].as_str())
        .collect();
    let distinct: HashSet<&str> = batch_ids.iter().copied().collect();
    assert_eq!(distinct.len(), 3);
    assert_eq!(batch_ids[0], batch_ids[9]);
    assert_ne!(batch_ids[9], batch_ids[10]);

    let batches = batches_holding(&app, 25).await;
    let mut counts: Vec<(i64, &str)> = batches
        .iter()
        .map(|b| {
            (
                b["requestCount"].as_i64().unwrap_or(0),
                b["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [(5, "building"), (10, "uploading"), (10, "uploading")]
    );
    for closed in batches.iter().filter(|b| b["status"] == "uploading") {
        assert_eq!(closed["closeReason"], "full");
        let successor = closed["successor"].as_str().expect("successor");
        assert!(distinct.contains(successor), "the successor holds the rest");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_single_submissions_never_overfill_or_share_a_request() {
    let db = TestDb::new().await;
    let app =
        Arc::new(TestApp::spawn_configured(&db, "limits", |c| c.batch_max_requests = 7).await);
    let single = "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { requestId batchId } }";
    let clients = (0..8).map(|client| {
        let app = Arc::clone(&app);
        async move {
            for i in 0..10 {
                let input = item(&format!("c{client}-{i}"), "m");
                let response = app.graphql(single, json!({ "input": input })).await;
                assert!(response["errors"].is_null(), "{response}");
            }
        }
    });
    join_all(clients).await;
    let batches = batches_holding(&app, 80).await;
    assert!(
        batches
            .iter()
            .all(|b| b["requestCount"].as_i64() <= Some(7)),
        "{batches:?}"
    );
    assert_eq!(
        batches.iter().filter(|b| b["status"] == "building").count(),
        1
    );
    let members: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT request_id) FROM batch_custom_ids")
            .fetch_one(&app.pool)
            .await
            .expect("members");
    assert_eq!(members, 80);
    Arc::try_unwrap(app)
        .ok()
        .expect("app still shared")
        .stop()
        .await;
}

/// Each instance keeps the batch state it wrote last; the other instance's adds make that
/// stale. Alternating between them, every add still lands once, and the batch closes at its
/// limit as if there were one writer.
#[tokio::test]
async fn two_instances_adding_to_one_batch_in_turn_overtake_each_others_kept_state_safely() {
    let db = TestDb::new().await;
    let configured = |c: &mut chronicle::config::Config| c.batch_max_requests = 5;
    let first = TestApp::spawn_configured(&db, "kept-a", configured).await;
    let second = TestApp::spawn_configured(&db, "kept-b", configured).await;
    let single =
        "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { requestId } }";
    for i in 0..12 {
        let app = if i % 2 == 0 { &first } else { &second };
        let response = app
            .graphql(single, json!({ "input": item(&format!("turn-{i}"), "m") }))
            .await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let batches = batches_holding(&first, 12).await;
    let mut counts: Vec<i64> = batches
        .iter()
        .filter_map(|b| b["requestCount"].as_i64())
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![2, 5, 5], "{batches:?}");
    let members: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT request_id) FROM batch_custom_ids")
            .fetch_one(&first.pool)
            .await
            .expect("members");
    assert_eq!(members, 12);
    first.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn every_invalid_item_is_reported_by_index_and_nothing_is_written() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "validation").await;
    let mut bad_endpoint = item("b", "m");
    bad_endpoint["endpoint"] = json!("/v1/images/generations");
    let mut mismatched_model = item("d", "m");
    mismatched_model["body"]["model"] = json!("other");
    let mut bad_webhook = item("e", "m");
    bad_webhook["delivery"] = json!({ "webhookUrl": "ftp://nowhere" });
    let mut bad_queue = item("f", "m");
    bad_queue["delivery"] = json!({ "rabbitmqQueue": "amq.reserved" });
    let mut not_object = item("g", "m");
    not_object["body"] = json!("text");
    let items = vec![
        item("a", "m"),
        bad_endpoint,
        item(&"x".repeat(65), "m"),
        mismatched_model,
        bad_webhook,
        bad_queue,
        not_object,
        item("h", " "),
    ];
    let response = app.graphql(SUBMIT_MANY, json!({ "requests": items })).await;
    let error = &response["errors"][0];
    assert_eq!(error["extensions"]["code"], "VALIDATION", "{response}");
    let indexes: Vec<i64> = error["extensions"]["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["index"].as_i64())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(event_count(&app).await, 0);

    app.graphql(SUBMIT_MANY, json!({ "requests": [item("dup", "m")] }))
        .await;
    // Opened + RequestsAdded, and the request stream started with them.
    let before = event_count(&app).await;
    assert_eq!(before, 3);
    let repeated = app
        .graphql(
            SUBMIT_MANY,
            json!({ "requests": [item("new", "m"), item("dup", "m")] }),
        )
        .await;
    assert_eq!(
        repeated["errors"][0]["extensions"]["code"], "VALIDATION",
        "{repeated}"
    );
    assert!(repeated["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("dup")));
    assert_eq!(
        event_count(&app).await,
        before,
        "a rejected bulk call wrote events"
    );
    // A single request is checked by the batch's unique index as it is appended, with the
    // same answer.
    let single = app
        .graphql(SUBMIT_MANY, json!({ "requests": [item("dup", "m")] }))
        .await;
    assert_eq!(
        single["errors"][0]["extensions"]["code"], "VALIDATION",
        "{single}"
    );
    assert!(single["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("already used") && m.contains("dup")));
    assert_eq!(
        event_count(&app).await,
        before,
        "a rejected call wrote events"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_submission_with_its_key_returns_the_first_outcome_once() {
    let db = TestDb::new().await;
    let app = Arc::new(TestApp::spawn(&db, "idempotent-submit").await);
    let keyed = "mutation($requests: [SubmitRequestInput!]!, $key: String) {
        submitRequests(requests: $requests, idempotencyKey: $key) { requestId batchId } }";
    let items: Vec<Value> = (0..20).map(|i| item(&format!("r{i}"), "m")).collect();
    let variables = json!({ "requests": items, "key": "bulk-1" });
    let copies = (0..8).map(|_| {
        let (app, variables) = (Arc::clone(&app), variables.clone());
        async move { app.graphql(keyed, variables).await["data"]["submitRequests"].clone() }
    });
    let outcomes = join_all(copies).await;
    assert!(
        outcomes[0].as_array().is_some_and(|a| a.len() == 20),
        "{:?}",
        outcomes[0]
    );
    assert!(
        outcomes.iter().all(|o| o == &outcomes[0]),
        "copies disagree"
    );
    batches_holding(&app, 20).await;

    let changed = json!({ "requests": [item("other", "m")], "key": "bulk-1" });
    let reused = app.graphql(keyed, changed).await;
    assert_eq!(
        reused["errors"][0]["extensions"]["code"], "VALIDATION",
        "{reused}"
    );
    Arc::try_unwrap(app)
        .ok()
        .expect("app still shared")
        .stop()
        .await;
}

#[tokio::test]
async fn a_keyed_submission_repeated_after_its_outcome_was_lost_completes_without_duplicates() {
    let db = TestDb::new().await;
    let app =
        TestApp::spawn_configured(&db, "idempotent-submit", |c| c.batch_max_requests = 4).await;
    let keyed = "mutation($requests: [SubmitRequestInput!]!, $key: String) {
        submitRequests(requests: $requests, idempotencyKey: $key) { requestId batchId } }";
    let items: Vec<Value> = (0..10).map(|i| item(&format!("r{i}"), "m")).collect();
    let variables = json!({ "requests": items, "key": "bulk-1" });
    let first = app.graphql(keyed, variables.clone()).await;
    assert!(first["errors"].is_null(), "{first}");
    // As if the process died after appending but before storing the outcome.
    sqlx::query("DELETE FROM idempotency_keys")
        .execute(&app.pool)
        .await
        .expect("forget the outcome");
    let again = app.graphql(keyed, variables).await;
    assert!(again["errors"].is_null(), "{again}");
    assert_eq!(
        again["data"], first["data"],
        "the repeat answers with the same requests"
    );
    let members: i64 = sqlx::query_scalar("SELECT count(*) FROM batch_custom_ids")
        .fetch_one(&app.pool)
        .await
        .expect("members");
    assert_eq!(members, 10, "no request was added twice");
    app.stop().await;
}
