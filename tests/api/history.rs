//! Auditors' history: one aggregate's events, its state as it was (by replay), and the log
//! narrowed by event type, actor, correlation id and time.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, TestApp, TestDb};

const SUBMIT: &str = "mutation($r: [SubmitRequestInput!]!) {
    submitRequests(requests: $r) { requestId batchId } }";
const EVENTS: &str = "query($t: String!, $i: String!, $from: Int) {
    aggregateEvents(aggregateType: $t, aggregateId: $i, fromSequence: $from) {
        sequence eventType eventVersion position recordedAt
        metadata { actor correlationId causationId commandId } } }";
const AT: &str = "query($t: String!, $i: String!, $v: Int, $at: DateTime) {
    aggregateAt(aggregateType: $t, aggregateId: $i, version: $v, at: $at) {
        version recordedAt state } }";
const LOG: &str = "query($f: LogFilterInput) { eventLog(filter: $f, first: 100) {
    edges { node { aggregateType eventType metadata { actor correlationId } } } } }";

async fn submitted(app: &TestApp) -> (String, String) {
    let items: Vec<Value> = (0..3)
        .map(|i| {
            json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                         "model": "m", "body": { "messages": [] }, "delivery": { "poll": true } })
        })
        .collect();
    let response = app.graphql(SUBMIT, json!({ "r": items })).await;
    let first = &response["data"]["submitRequests"][0];
    let batch = first["batchId"].as_str().expect("batch").to_owned();
    let request = first["requestId"].as_str().expect("request").to_owned();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch })).await;
    (batch, request)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregate_is_shown_as_it_was_at_a_version_or_a_time() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "history").await;
    let (batch, request) = submitted(&app).await;

    let response = app
        .graphql(EVENTS, json!({ "t": "Batch", "i": batch }))
        .await;
    let events = response["data"]["aggregateEvents"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .clone();
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["BatchOpened", "BatchRequestsAdded", "BatchClosed"]);
    assert_eq!(events[0]["metadata"]["actor"], "admin");
    assert!(events[0]["metadata"]["commandId"].is_string());
    let later = app
        .graphql(EVENTS, json!({ "t": "Batch", "i": batch, "from": 3 }))
        .await;
    assert_eq!(
        later["data"]["aggregateEvents"][0]["eventType"],
        "BatchClosed"
    );

    let building = app
        .graphql(AT, json!({ "t": "Batch", "i": batch, "v": 2 }))
        .await;
    let state = &building["data"]["aggregateAt"];
    assert_eq!(state["version"], 2, "{building}");
    assert_eq!(state["state"]["status"], "building");
    assert_eq!(state["state"]["request_count"], 3);
    let closed = app
        .graphql(AT, json!({ "t": "Batch", "i": batch, "v": 3 }))
        .await;
    assert_eq!(
        closed["data"]["aggregateAt"]["state"]["status"],
        "uploading"
    );
    // At the time of the second event, the batch was as after the second event.
    let at = events[1]["recordedAt"].clone();
    let then = app
        .graphql(AT, json!({ "t": "Batch", "i": batch, "at": at }))
        .await;
    assert_eq!(then["data"]["aggregateAt"]["version"], 2, "{then}");
    let before = app
        .graphql(AT, json!({ "t": "Batch", "i": batch, "v": 0 }))
        .await;
    assert_eq!(before["data"]["aggregateAt"]["version"], 0);
    assert_eq!(
        before["data"]["aggregateAt"]["state"]["status"],
        Value::Null
    );
    // Past the end, in version or in time, is an error, not the latest state.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for past_the_end in [
        json!({ "t": "Batch", "i": batch, "v": 99 }),
        json!({ "t": "Batch", "i": batch, "at": future }),
    ] {
        let refused = app.graphql(AT, past_the_end.clone()).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "VALIDATION",
            "{past_the_end}: {refused}"
        );
    }

    let pending = eventually(Duration::from_secs(15), "the request's stream", || async {
        let response = app
            .graphql(AT, json!({ "t": "Request", "i": request, "v": 1 }))
            .await;
        let state = response["data"]["aggregateAt"]["state"].clone();
        (state["status"] == "pending").then_some(state)
    })
    .await;
    assert_eq!(pending["submission"]["spec"]["custom_id"], "r0");

    for (variables, code) in [
        (
            json!({ "t": "Batch", "i": batch, "v": 1, "at": at }),
            "VALIDATION",
        ),
        (json!({ "t": "Batch", "i": batch }), "VALIDATION"),
        (json!({ "t": "Batch", "i": "nope", "v": 1 }), "NOT_FOUND"),
    ] {
        let response = app.graphql(AT, variables).await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"], code,
            "{response}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_narrows_to_one_client_call_across_aggregates() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "history").await;
    let (batch, _) = submitted(&app).await;
    let events = app
        .graphql(EVENTS, json!({ "t": "Batch", "i": batch }))
        .await;
    let correlation = events["data"]["aggregateEvents"][0]["metadata"]["correlationId"]
        .as_str()
        .expect("correlation")
        .to_owned();
    let view = eventually(Duration::from_secs(15), "the correlation view", || async {
        let response = app
            .graphql(LOG, json!({ "f": { "correlationId": correlation } }))
            .await;
        let edges = response["data"]["eventLog"]["edges"].as_array()?.clone();
        (edges.len() == 2 + 3).then_some(edges)
    })
    .await;
    let kinds: Vec<&str> = view
        .iter()
        .map(|e| e["node"]["aggregateType"].as_str().expect("type"))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "Batch").count(),
        2,
        "opened and added"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "Request").count(),
        3,
        "each request's start"
    );
    assert!(view
        .iter()
        .all(|e| e["node"]["metadata"]["correlationId"] == correlation.as_str()));

    // Settled events only: the close may wait a moment for older transactions to end.
    eventually(Duration::from_secs(15), "the one close", || async {
        let closed = app
            .graphql(
                LOG,
                json!({ "f": { "eventTypes": ["BatchClosed"], "actor": "admin" } }),
            )
            .await;
        (closed["data"]["eventLog"]["edges"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let future = app
        .graphql(
            LOG,
            json!({ "f": { "recordedFrom": "2100-01-01T00:00:00Z" } }),
        )
        .await;
    assert_eq!(future["data"]["eventLog"]["edges"], json!([]));
}
