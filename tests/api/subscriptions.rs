//! The `events` subscription over a real websocket: catch-up, live, resume, across instances.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{LedgerCommand, Subscription, TestApp, TestDb};

const EVENTS: &str = "subscription($after: String, $id: String) {
    events(after: $after, aggregateTypes: [\"Ledger\"], aggregateId: $id) {
        cursor aggregateId sequence eventType metadata { actor correlationId commandId }
    }
}";
const WAIT: Duration = Duration::from_secs(10);

/// The next `count` events a subscription to `events` receives.
pub async fn receive(subscription: &mut Subscription, count: usize) -> Vec<Value> {
    let mut received = Vec::new();
    for _ in 0..count {
        let data = subscription
            .next_data(WAIT)
            .await
            .expect("an event in time");
        received.push(data["events"].clone());
    }
    received
}

/// The events' sequence numbers.
pub fn sequences(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["sequence"].as_i64().unwrap_or(-1))
        .collect()
}

#[tokio::test]
async fn a_resumed_subscription_receives_everything_written_meanwhile_exactly_once() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "subscriptions").await;
    let opened = app.ledger("l", LedgerCommand::Open).await.expect("open");
    let start = opened.cursor.expect("cursor").to_string();

    let mut first = Subscription::start(&app.ws_url(), EVENTS, json!({ "after": start })).await;
    app.ledger("l", LedgerCommand::Deposit(vec![1; 5]))
        .await
        .expect("deposit");
    let before = receive(&mut first, 5).await;
    assert_eq!(sequences(&before), vec![2, 3, 4, 5, 6]);
    assert_eq!(before[0]["metadata"]["actor"], "tester");
    first.close().await;

    app.ledger("l", LedgerCommand::Deposit(vec![1; 7]))
        .await
        .expect("deposit");
    let last_cursor = before[4]["cursor"].clone();
    let mut resumed =
        Subscription::start(&app.ws_url(), EVENTS, json!({ "after": last_cursor })).await;
    let meanwhile = receive(&mut resumed, 7).await;
    assert_eq!(sequences(&meanwhile), (7..=13).collect::<Vec<_>>());

    app.ledger("l", LedgerCommand::Withdraw(1))
        .await
        .expect("withdraw");
    let live = receive(&mut resumed, 1).await;
    assert_eq!(sequences(&live), vec![14], "nothing was delivered twice");
    resumed.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_subscriber_on_one_instance_receives_events_written_through_another() {
    let db = TestDb::new().await;
    let writer = TestApp::spawn(&db, "instance-a").await;
    let listener = TestApp::spawn(&db, "instance-b").await;
    let marker = writer
        .ledger("marker", LedgerCommand::Open)
        .await
        .expect("open");
    let after = marker.cursor.expect("cursor").to_string();
    let mut subscription = Subscription::start(
        &listener.ws_url(),
        EVENTS,
        json!({ "after": after, "id": "shared" }),
    )
    .await;
    writer
        .ledger("shared", LedgerCommand::Open)
        .await
        .expect("open");
    writer
        .ledger("shared", LedgerCommand::Deposit(vec![2, 3]))
        .await
        .expect("deposit");
    let received = receive(&mut subscription, 3).await;
    assert_eq!(sequences(&received), vec![1, 2, 3]);
    subscription.close().await;
    listener.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn a_subscription_with_a_forged_cursor_fails_with_a_validation_code() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "subscriptions").await;
    let mut subscription =
        Subscription::start(&app.ws_url(), EVENTS, json!({ "after": "c1.x.y" })).await;
    let message = subscription.next_message(WAIT).await.expect("a reply");
    assert_eq!(
        message["payload"]["errors"][0]["extensions"]["code"], "VALIDATION",
        "{message}"
    );
    subscription.close().await;
    app.stop().await;
}

#[tokio::test]
async fn batch_updates_replay_the_history_then_follow_live_and_resume_by_cursor() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "updates").await;
    let submit =
        "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { batchId } }";
    let input = json!({ "customId": "a", "endpoint": "/v1/embeddings", "model": "m",
                        "body": { "input": "x" }, "delivery": { "poll": true } });
    let submitted = app.graphql(submit, json!({ "input": input })).await;
    let batch_id = submitted["data"]["submitRequest"]["batchId"].clone();
    let query = "subscription($id: UUID!, $after: String) {
        batchUpdated(id: $id, after: $after) { cursor version eventType status } }";
    let mut subscription =
        Subscription::start(&app.ws_url(), query, json!({ "id": batch_id })).await;
    let history = receive_field(&mut subscription, "batchUpdated", 2).await;
    assert_eq!(history[0]["eventType"], "BatchOpened");
    assert_eq!(history[1]["status"], "building");

    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch_id })).await;
    let live = receive_field(&mut subscription, "batchUpdated", 1).await;
    assert_eq!(live[0]["eventType"], "BatchClosed");
    assert_eq!(live[0]["status"], "uploading");
    subscription.close().await;

    let mut resumed = Subscription::start(
        &app.ws_url(),
        query,
        json!({ "id": batch_id, "after": history[1]["cursor"] }),
    )
    .await;
    let after = receive_field(&mut resumed, "batchUpdated", 1).await;
    assert_eq!(after[0]["version"], 3);
    resumed.close().await;

    let mut someone_elses = Subscription::start(
        &app.ws_url(),
        query,
        json!({ "id": "00000000-0000-7000-8000-000000000000" }),
    )
    .await;
    let refused = someone_elses.next_message(WAIT).await.expect("a reply");
    assert_eq!(
        refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{refused}"
    );
    app.stop().await;
}

async fn receive_field(subscription: &mut Subscription, field: &str, count: usize) -> Vec<Value> {
    let mut received = Vec::new();
    for _ in 0..count {
        let data = subscription
            .next_data(WAIT)
            .await
            .expect("an update in time");
        received.push(data[field].clone());
    }
    received
}

#[tokio::test]
async fn owner_wide_updates_show_only_the_callers_batches() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "updates").await;
    let key = app.client_key("alice", "CLIENT").await;
    let submit =
        "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { batchId } }";
    let input = |custom_id: &str, model: &str| {
        json!({ "input": { "customId": custom_id, "endpoint": "/v1/embeddings", "model": model,
                           "body": { "input": "x" }, "delivery": { "poll": true } } })
    };
    let first = app.graphql_as(&key, submit, input("a", "m1")).await;
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { cursor } }";
    let flushed = app
        .graphql_as(
            &key,
            flush,
            json!({ "id": first["data"]["submitRequest"]["batchId"] }),
        )
        .await;
    let after = flushed["data"]["flushBatch"]["cursor"].clone();
    let query = "subscription($after: String) { batchesUpdated(after: $after) { id eventType } }";
    let mut subscription =
        Subscription::start_as(&app.ws_url(), &key, query, json!({ "after": after })).await;

    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Batch', '0190f0f0-0000-7000-8000-000000000001', 1, 'BatchOpened', '1.0.0',
                 '{\"Opened\": {\"batch_id\": \"0190f0f0-0000-7000-8000-000000000001\",
                   \"key\": {\"owner\": \"someone-else\", \"endpoint\": \"/v1/embeddings\",
                             \"model\": \"m\"}, \"at\": \"2026-11-23T08:00:00Z\"}}', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("another owner's batch");
    let second = app.graphql_as(&key, submit, input("b", "m2")).await;
    let mine = second["data"]["submitRequest"]["batchId"].clone();
    let updates = receive_field(&mut subscription, "batchesUpdated", 2).await;
    assert_eq!(updates[0]["id"], mine, "{updates:?}");
    assert_eq!(updates[0]["eventType"], "BatchOpened");
    assert_eq!(updates[1]["eventType"], "BatchRequestsAdded");
    subscription.close().await;
    app.stop().await;
}
