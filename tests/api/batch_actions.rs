//! Owner actions on batches and requests, the read models they show in, and the audit trail.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, TestApp, TestDb};

const SUBMIT: &str = "mutation($input: SubmitRequestInput!) {
    submitRequest(input: $input) { requestId batchId customId } }";

fn item(custom_id: &str) -> Value {
    json!({
        "customId": custom_id,
        "endpoint": "/v1/embeddings",
        "model": "text-embedding-3-small",
        "body": { "input": custom_id },
        "delivery": { "webhookUrl": "https://receiver.test/hook" },
    })
}

async fn submit(app: &TestApp, custom_id: &str) -> Value {
    let response = app
        .graphql(SUBMIT, json!({ "input": item(custom_id) }))
        .await;
    response["data"]["submitRequest"].clone()
}

fn code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("none")
}

/// Waits until `query` (with `variables`) returns `data.<field>.status == status`.
async fn status_becomes(app: &TestApp, field: &str, id: &str, status: &str) -> Value {
    let query = format!("query($id: UUID!) {{ {field}(id: $id) {{ status version }} }}");
    eventually(Duration::from_secs(15), status, || async {
        let response = app.graphql(&query, json!({ "id": id })).await;
        (response["data"][field]["status"] == status).then(|| response["data"][field].clone())
    })
    .await
}

#[tokio::test]
async fn a_flushed_batch_closes_and_the_next_submission_opens_another() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "actions").await;
    let first = submit(&app, "a").await;
    let batch_id = first["batchId"].as_str().expect("batch id").to_owned();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { aggregateId version } }";
    let flushed = app.graphql(flush, json!({ "id": batch_id })).await;
    assert_eq!(flushed["data"]["flushBatch"]["version"], 3, "{flushed}");
    status_becomes(&app, "batch", &batch_id, "uploading").await;

    let again = app.graphql(flush, json!({ "id": batch_id })).await;
    assert_eq!(code(&again), "INVALID_TRANSITION", "{again}");
    let second = submit(&app, "a").await;
    assert_ne!(
        second["batchId"], first["batchId"],
        "custom id `a` is free in the new batch"
    );

    let unknown = app
        .graphql(
            flush,
            json!({ "id": "00000000-0000-7000-8000-000000000000" }),
        )
        .await;
    assert_eq!(code(&unknown), "NOT_FOUND", "{unknown}");
    app.stop().await;
}

#[tokio::test]
async fn a_request_can_be_cancelled_only_while_its_batch_is_building() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "actions").await;
    let first = submit(&app, "a").await;
    let second = submit(&app, "b").await;
    let (first_id, second_id) = (first["requestId"].clone(), second["requestId"].clone());

    // At once after submitting (the submission started the request's stream), and read back
    // at once (the withdrawal cancelled the request in its own transaction).
    let cancel = "mutation($id: UUID!) { cancelRequest(requestId: $id) { version } }";
    let cancelled = app.graphql(cancel, json!({ "id": first_id })).await;
    assert!(cancelled["errors"].is_null(), "{cancelled}");
    let status = "query($id: UUID!) { request(id: $id) { status } }";
    let read = app.graphql(status, json!({ "id": first_id })).await;
    assert_eq!(read["data"]["request"]["status"], "cancelled", "{read}");
    let twice = app.graphql(cancel, json!({ "id": first_id })).await;
    assert_eq!(code(&twice), "INVALID_TRANSITION", "{twice}");

    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": second["batchId"] })).await;
    let late = app.graphql(cancel, json!({ "id": second_id })).await;
    assert_eq!(code(&late), "INVALID_TRANSITION", "{late}");
    assert!(late["errors"][0]["message"]
        .as_str()
        .is_some_and(|m| m.contains("uploading")));
    app.stop().await;
}

#[tokio::test]
async fn pushed_results_cannot_be_acknowledged() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "actions").await;
    let request = submit(&app, "a").await;
    let id = request["requestId"].as_str().expect("id").to_owned();
    status_becomes(&app, "request", &id, "pending").await;
    let ack = "mutation($id: UUID!) { acknowledgeResult(requestId: $id) { version } }";
    let response = app.graphql(ack, json!({ "id": id })).await;
    assert_eq!(code(&response), "INVALID_TRANSITION", "{response}");
    app.stop().await;
}

#[tokio::test]
async fn the_audit_trail_lists_each_state_change_with_actor_and_correlation() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "audit").await;
    let request = submit(&app, "a").await;
    let batch_id = request["batchId"].as_str().expect("batch").to_owned();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch_id })).await;
    let query = "query($id: UUID!) { transitions(aggregateId: $id) {
        fromState toState eventType actor correlationId } }";
    let trail = eventually(Duration::from_secs(15), "transitions", || async {
        let response = app.graphql(query, json!({ "id": batch_id })).await;
        let trail = response["data"]["transitions"].as_array()?.clone();
        (trail.len() == 2).then_some(trail)
    })
    .await;
    assert_eq!(trail[0]["fromState"], Value::Null);
    assert_eq!(trail[0]["toState"], "building");
    assert_eq!(trail[1]["fromState"], "building");
    assert_eq!(trail[1]["toState"], "uploading");
    assert_eq!(trail[1]["eventType"], "BatchClosed");
    assert_eq!(trail[1]["actor"], "admin");

    let request_trail = eventually(Duration::from_secs(15), "request transitions", || async {
        let response = app
            .graphql(query, json!({ "id": request["requestId"] }))
            .await;
        let trail = response["data"]["transitions"].as_array()?.clone();
        (trail.len() == 1).then_some(trail)
    })
    .await;
    assert_eq!(request_trail[0]["toState"], "pending");
    // The submission wrote the request's first event: the submitter is its actor.
    assert_eq!(request_trail[0]["actor"], "admin");
    app.stop().await;
}

#[tokio::test]
async fn request_lists_filter_and_page_newest_first() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "lists").await;
    for custom_id in ["a", "b", "c", "d", "e"] {
        submit(&app, custom_id).await;
    }
    let query = "query($after: String) { requests(first: 2, after: $after,
        filter: { status: \"pending\", model: \"text-embedding-3-small\" }) {
        edges { cursor node { customId } } pageInfo { hasNextPage } } }";
    let ids = eventually(Duration::from_secs(15), "five requests", || async {
        let (mut after, mut ids) = (Value::Null, Vec::new());
        loop {
            let response = app.graphql(query, json!({ "after": after })).await;
            let page = &response["data"]["requests"];
            for edge in page["edges"].as_array()? {
                ids.push(edge["node"]["customId"].as_str()?.to_owned());
                after = edge["cursor"].clone();
            }
            if page["pageInfo"]["hasNextPage"] != true {
                break;
            }
        }
        (ids.len() == 5).then_some(ids)
    })
    .await;
    assert_eq!(ids, ["e", "d", "c", "b", "a"]);
    let none = app
        .graphql(
            "{ requests(filter: { status: \"delivered\" }) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(none["data"]["requests"]["edges"], json!([]));
    let forged = app
        .graphql(
            "{ requests(after: \"k1.x\") { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&forged), "VALIDATION");
    app.stop().await;
}

#[tokio::test]
async fn a_batch_closes_by_itself_after_the_maximum_wait() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_configured(&db, "closer", |c| c.batch_max_wait_ms = 300).await;
    let request = submit(&app, "a").await;
    let batch_id = request["batchId"].as_str().expect("batch").to_owned();
    let query = "query($id: UUID!) { batch(id: $id) { status closeReason } }";
    let closed = eventually(Duration::from_secs(15), "the closer", || async {
        let response = app.graphql(query, json!({ "id": batch_id })).await;
        (response["data"]["batch"]["status"] == "uploading")
            .then(|| response["data"]["batch"].clone())
    })
    .await;
    assert_eq!(closed["closeReason"], "max_wait");
    app.stop().await;
}

#[tokio::test]
async fn cancelling_a_building_batch_cancels_its_requests_in_the_same_transaction() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "actions").await;
    let first = submit(&app, "a").await;
    submit(&app, "b").await;
    let cancel = "mutation($id: UUID!) { cancelBatch(batchId: $id) { version } }";
    let cancelled = app.graphql(cancel, json!({ "id": first["batchId"] })).await;
    assert!(cancelled["errors"].is_null(), "{cancelled}");
    // No waiting: the requests' events and read model rows committed with the batch's.
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM requests GROUP BY status")
            .fetch_all(&app.pool)
            .await
            .expect("requests");
    assert_eq!(rows, [("cancelled".to_owned(), 2)]);
    let transactions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT event_type, count(DISTINCT transaction_id) FROM events
          WHERE event_type IN ('BatchCancelled', 'RequestCancelled')
          GROUP BY event_type ORDER BY event_type",
    )
    .fetch_all(&app.pool)
    .await
    .expect("events");
    assert_eq!(
        transactions,
        [
            ("BatchCancelled".to_owned(), 1),
            ("RequestCancelled".to_owned(), 1)
        ]
    );
    let together: bool = sqlx::query_scalar(
        "SELECT count(DISTINCT transaction_id) = 1 FROM events
          WHERE event_type IN ('BatchCancelled', 'RequestCancelled')",
    )
    .fetch_one(&app.pool)
    .await
    .expect("one transaction");
    assert!(together, "the batch and its requests were cancelled apart");
    app.stop().await;
}
