//! Webhook delivery end to end: the provider emulator produces results, the delivery worker
//! pushes them to receivers started here, and every attempt is visible over GraphQL.

use std::collections::{HashMap, HashSet};

use std::time::Duration;

use chronicle::config::Config;
use chronicle::provider::Faults;
use serde_json::{json, Value};

use crate::support::{eventually, spawn_emulator, Behaviour, Receiver, TestApp, TestDb};

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId batchId } }";

const REQUEST: &str = "query($id: UUID!) { request(id: $id) {
    status deliveryRounds deliveryAttemptCount deliveryError
    deliveryAttempts { round number deliveryId statusCode error outcome retryAt } } }";

const BATCH: &str = "query($id: UUID!) { batch(id: $id) { status requestCounts {
    providerProcessed delivering delivered deliveryFailed consumed consumeFailed failed } } }";

/// An app with a provider emulator, delivery settings changed by `change`.
pub async fn app_with_provider(db: &TestDb, change: impl FnOnce(&mut Config)) -> TestApp {
    let (_emulator, url) = spawn_emulator(Faults::default()).await;
    TestApp::spawn_configured(db, "delivery", |config| {
        config.provider_url = Some(url);
        change(config);
    })
    .await
}

/// Submits one request per delivery, flushes the batch; returns (batch id, request ids).
pub async fn submit(app: &TestApp, deliveries: &[Value]) -> (String, Vec<String>) {
    let items: Vec<Value> = deliveries
        .iter()
        .enumerate()
        .map(|(i, delivery)| {
            json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                    "model": "m", "delivery": delivery,
                    "body": { "messages": [{ "role": "user", "content": format!("q{i}") }] } })
        })
        .collect();
    let response = app.graphql(SUBMIT_MANY, json!({ "requests": items })).await;
    let accepted = response["data"]["submitRequests"]
        .as_array()
        .unwrap_or_else(|| panic!("submitted: {response}"));
    let batch_id = accepted[0]["batchId"]
        .as_str()
        .expect("batch id")
        .to_owned();
    let ids = accepted
        .iter()
        .map(|a| a["requestId"].as_str().expect("id").to_owned())
        .collect();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch_id })).await;
    (batch_id, ids)
}

/// The batch once it reached `status`.
pub async fn batch_when(app: &TestApp, batch_id: &str, status: &str) -> Value {
    eventually(Duration::from_secs(60), status, || async {
        let response = app.graphql(BATCH, json!({ "id": batch_id })).await;
        let batch = &response["data"]["batch"];
        (batch["status"] == status).then(|| batch.clone())
    })
    .await
}

/// The request once its status is `status` and it shows `attempts` attempts.
async fn request_when(app: &TestApp, id: &str, status: &str, attempts: usize) -> Value {
    eventually(Duration::from_secs(30), status, || async {
        let response = app.graphql(REQUEST, json!({ "id": id })).await;
        let request = &response["data"]["request"];
        let shown = request["deliveryAttempts"].as_array().map_or(0, Vec::len);
        (request["status"] == status && shown == attempts).then(|| request.clone())
    })
    .await
}

async fn webhook_secret(app: &TestApp) -> String {
    let response = app.graphql("{ webhookSecret }", json!({})).await;
    response["data"]["webhookSecret"]
        .as_str()
        .expect("secret")
        .to_owned()
}

/// How many delivery attempts the requests `ids` have in the log.
pub async fn attempts_recorded(app: &TestApp, ids: &[String]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'RequestDeliveryAttempted'
            AND aggregate_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(&app.pool)
    .await
    .expect("count attempts")
}

pub fn webhook(url: &str) -> Value {
    json!({ "webhookUrl": url })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_results_reach_the_receiver_signed_and_the_batch_is_done() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let (batch_id, ids) = submit(&app, &vec![webhook(&receiver.url); 1000]).await;

    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["delivered"], 1000);
    assert_eq!(batch["requestCounts"]["delivering"], 0);

    let secret = webhook_secret(&app).await;
    assert!(secret.starts_with("whsec_"), "{secret}");
    let accepted = receiver.accepted();
    let mut seen = HashSet::new();
    for call in &accepted {
        assert!(
            call.signed_with(&secret),
            "bad signature on {:?}",
            call.headers
        );
        let envelope = call.json();
        assert_eq!(envelope["type"], "request.result");
        assert_eq!(envelope["batch_id"], batch_id.as_str());
        assert_eq!(envelope["model"], "m");
        assert_eq!(envelope["endpoint"], "/v1/chat/completions");
        assert!(envelope["attempt"].as_u64() >= Some(1));
        assert!(envelope["response"].is_object(), "{envelope}");
        assert_eq!(call.header("idempotency-key"), envelope["delivery_id"]);
        assert_eq!(
            call.header("chronicle-delivery-id"),
            envelope["delivery_id"]
        );
        let custom_id = envelope["custom_id"].as_str().expect("custom id");
        let index: usize = custom_id[1..].parse().expect("index");
        assert_eq!(envelope["request_id"], ids[index].as_str());
        seen.insert(envelope["request_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(seen.len(), 1000, "every result once at least");

    let request = request_when(&app, &ids[7], "delivered", 1).await;
    let attempt = &request["deliveryAttempts"][0];
    assert_eq!(attempt["outcome"], "delivered");
    assert_eq!(attempt["statusCode"], 200);
    assert_eq!(request["deliveryRounds"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_failing_three_times_gets_the_result_on_the_fourth_attempt() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let receiver = Receiver::start(Behaviour::FailFirst(3)).await;
    let (batch_id, ids) = submit(&app, &vec![webhook(&receiver.url); 3]).await;
    batch_when(&app, &batch_id, "done").await;

    for id in &ids {
        let request = request_when(&app, id, "delivered", 4).await;
        let attempts = request["deliveryAttempts"].as_array().expect("attempts");
        let outcomes: Vec<&str> = attempts
            .iter()
            .map(|a| a["outcome"].as_str().expect("outcome"))
            .collect();
        assert_eq!(outcomes, ["retry", "retry", "retry", "delivered"]);
        assert!(attempts
            .iter()
            .all(|a| a["deliveryId"] == attempts[0]["deliveryId"]));
        assert_eq!(attempts[0]["statusCode"], 503);
        assert!(attempts[0]["retryAt"].is_string());
    }
    let numbers: Vec<String> = receiver
        .received()
        .iter()
        .filter(|call| call.json()["request_id"] == ids[0].as_str())
        .map(|call| call.header("chronicle-delivery-attempt").to_owned())
        .collect();
    assert_eq!(numbers, ["1", "2", "3", "4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_stays_down_ends_in_delivery_failed_after_the_configured_attempts() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |c| c.delivery.delivery_max_attempts = 3).await;
    let down = Receiver::down_url().await;
    let (batch_id, ids) = submit(&app, &[webhook(&down)]).await;

    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["deliveryFailed"], 1);
    let request = request_when(&app, &ids[0], "delivery_failed", 3).await;
    let attempts = request["deliveryAttempts"].as_array().expect("attempts");
    assert_eq!(attempts[2]["outcome"], "failed");
    assert!(attempts
        .iter()
        .all(|a| a["statusCode"].is_null() && a["error"].is_string()));
    let reason = request["deliveryError"].as_str().expect("reason");
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_that_refuses_with_400_fails_at_once_and_redelivery_starts_a_new_round() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let receiver = Receiver::start(Behaviour::Status(400)).await;
    let (batch_id, ids) = submit(&app, &vec![webhook(&receiver.url); 2]).await;
    batch_when(&app, &batch_id, "done").await;
    let failed = request_when(&app, &ids[0], "delivery_failed", 1).await;
    assert_eq!(failed["deliveryAttempts"][0]["statusCode"], 400);
    assert_eq!(failed["deliveryAttempts"][0]["outcome"], "failed");

    receiver.set(Behaviour::Accept);
    let redeliver = "mutation($id: UUID!) { redeliver(requestId: $id) { version } }";
    let response = app.graphql(redeliver, json!({ "id": ids[0] })).await;
    assert!(response["errors"].is_null(), "{response}");
    let request = request_when(&app, &ids[0], "delivered", 2).await;
    assert_eq!(request["deliveryRounds"], 2);
    let attempts = &request["deliveryAttempts"];
    assert_eq!(attempts[1]["round"], 2);
    assert_eq!(attempts[1]["number"], 1);
    assert_ne!(attempts[0]["deliveryId"], attempts[1]["deliveryId"]);

    // A result being delivered cannot be redelivered; a delivered one can.
    let again = app.graphql(redeliver, json!({ "id": ids[0] })).await;
    assert!(again["errors"].is_null(), "{again}");
    let batch_again = "mutation($id: UUID!) { redeliverBatch(batchId: $id) { requests } }";
    let response = app.graphql(batch_again, json!({ "id": batch_id })).await;
    assert_eq!(
        response["data"]["redeliverBatch"]["requests"], 1,
        "{response}"
    );
    request_when(&app, &ids[1], "delivered", 2).await;
    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["delivered"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_receiver_times_out_and_each_attempt_says_so() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |c| {
        c.delivery.delivery_timeout_ms = 300;
        c.delivery.delivery_max_attempts = 2;
    })
    .await;
    let receiver = Receiver::start(Behaviour::Hang(Duration::from_secs(5))).await;
    let (_, ids) = submit(&app, &[webhook(&receiver.url)]).await;
    let request = request_when(&app, &ids[0], "delivery_failed", 2).await;
    for attempt in request["deliveryAttempts"].as_array().expect("attempts") {
        assert_eq!(attempt["error"], "no answer within 300 ms");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_receiver_does_not_hold_up_another() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |c| {
        c.delivery.delivery_concurrency = 4;
        c.delivery.delivery_per_target = 2;
        c.delivery.delivery_timeout_ms = 3_000;
        c.delivery.delivery_max_attempts = 1;
    })
    .await;
    let slow = Receiver::start(Behaviour::Hang(Duration::from_secs(10))).await;
    let fast = Receiver::start(Behaviour::Accept).await;
    let mut deliveries = vec![webhook(&slow.url); 10];
    deliveries.extend(vec![webhook(&fast.url); 10]);
    let (_, ids) = submit(&app, &deliveries).await;

    eventually(Duration::from_secs(60), "fast deliveries", || async {
        (fast.accepted().len() == 10).then_some(())
    })
    .await;
    // Every fast result arrived while the slow receiver's first attempts still hung.
    let recorded = attempts_recorded(&app, &ids[..10]).await;
    assert_eq!(recorded, 0, "slow attempts finished before the fast ones");
    eventually(
        Duration::from_secs(5),
        "per_target calls to the slow one",
        || async { (slow.received().len() == 2).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_mid_delivery_loses_nothing_and_repeats_keep_their_delivery_id() {
    let db = TestDb::new().await;
    let (_emulator, url) = spawn_emulator(Faults::default()).await;
    let configure = |config: &mut Config| {
        config.provider_url = Some(url.clone());
        config.delivery.delivery_concurrency = 5;
        config.delivery.delivery_per_target = 5;
    };
    let first = TestApp::spawn_configured(&db, "first", configure).await;
    let receiver = Receiver::start(Behaviour::Slow(Duration::from_millis(150))).await;
    let (batch_id, ids) = submit(&first, &vec![webhook(&receiver.url); 60]).await;
    eventually(Duration::from_secs(60), "first deliveries", || async {
        (receiver.received().len() >= 10).then_some(())
    })
    .await;
    first.kill().await;

    let second = TestApp::spawn_configured(&db, "second", configure).await;
    batch_when(&second, &batch_id, "done").await;
    let mut delivery_ids: HashMap<String, HashSet<String>> = HashMap::new();
    let received = receiver.received();
    for call in &received {
        let envelope = call.json();
        delivery_ids
            .entry(envelope["request_id"].as_str().expect("id").to_owned())
            .or_default()
            .insert(
                envelope["delivery_id"]
                    .as_str()
                    .expect("delivery id")
                    .to_owned(),
            );
    }
    assert_eq!(delivery_ids.len(), ids.len(), "every result was sent");
    assert!(delivery_ids.values().all(|set| set.len() == 1));
    assert!(
        received.len() <= ids.len() + 5,
        "only in-flight attempts repeat: {} calls",
        received.len()
    );
    let delivered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM requests WHERE status = 'delivered'")
            .fetch_one(&second.pool)
            .await
            .expect("count");
    assert_eq!(delivered, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn polled_results_keep_the_batch_delivering_until_acknowledged() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let poll = json!({ "poll": true });
    let (batch_id, ids) = submit(&app, &[poll.clone(), poll]).await;
    let batch = batch_when(&app, &batch_id, "delivering").await;
    assert_eq!(batch["requestCounts"]["providerProcessed"], 2);
    let redeliver = "mutation($id: UUID!) { redeliver(requestId: $id) { version } }";
    let refused = app.graphql(redeliver, json!({ "id": ids[0] })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "INVALID_TRANSITION",
        "{refused}"
    );
    let acknowledge = "mutation($id: UUID!) { acknowledgeResult(requestId: $id) { version } }";
    let report = "mutation($id: UUID!) { reportResultFailure(requestId: $id, reason: \"bad\") {
        version } }";
    for (mutation, id) in [(acknowledge, &ids[0]), (report, &ids[1])] {
        let response = app.graphql(mutation, json!({ "id": id })).await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["consumed"], 1);
    assert_eq!(batch["requestCounts"]["consumeFailed"], 1);
}
