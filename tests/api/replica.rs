//! Reads from a real streaming replica (`.ci/start-replica`): queries are served by it, a
//! query after a mutation's cursor waits for it or falls back to the primary, visibly in
//! `/metrics`, and a subscription catches up from it without a gap where it lags. These tests
//! pause the shared replica's replay, so they run one at a time (nextest group `replica`).

use std::time::{Duration, Instant};

use chronicle_projections::LogCursor;
use serde_json::{json, Value};

use crate::subscriptions::{receive, sequences};
use crate::support::{
    eventually, LedgerCommand, Replica, Scrape, Subscription, TestApp, TestDb, ADMIN_KEY,
};

const SUBMIT: &str = "mutation($i: SubmitRequestInput!) {
    submitRequest(input: $i) { requestId cursor } }";
const LIST: &str = "{ requests(first: 1000) { edges { node { id } } } }";
/// How long a query waits for the replica before the primary serves it, in these tests.
const REPLICA_WAIT_MS: u64 = 300;

async fn app_reading_from(db: &TestDb, name: &str, url: &str) -> TestApp {
    let url = url.to_owned();
    TestApp::spawn_configured(db, name, |config| {
        config.replica.read_database_url = Some(url);
        config.replica.replica_wait_ms = REPLICA_WAIT_MS;
    })
    .await
}

/// Submits a request; its id and cursor.
async fn submit(app: &TestApp, custom_id: &str) -> (String, String) {
    let input = json!({ "i": { "customId": custom_id, "endpoint": "/v1/chat/completions",
        "model": "m", "body": { "model": "m", "messages": [] }, "delivery": { "poll": true } } });
    let (status, answer) = post(app, None, SUBMIT, input).await;
    assert_eq!(status, 200, "{answer}");
    let submitted = &answer["data"]["submitRequest"];
    let text = |field: &str| {
        submitted[field]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"))
            .to_owned()
    };
    (text("requestId"), text("cursor"))
}

async fn post(app: &TestApp, after: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
    let bearer = format!("Bearer {ADMIN_KEY}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    headers.extend(after.map(|after| ("x-chronicle-after", after)));
    app.post_with(&headers, query, variables).await
}

/// The ids the request list shows, read after `after` when given.
async fn listed(app: &TestApp, after: Option<&str>) -> Vec<String> {
    let (status, answer) = post(app, after, LIST, json!({})).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"]["requests"]["edges"]
        .as_array()
        .unwrap_or_else(|| panic!("{answer}"))
        .iter()
        .map(|edge| edge["node"]["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The log position of a cursor a mutation returned.
fn position(cursor: &str) -> i64 {
    cursor.parse::<LogCursor>().expect("a log cursor").position
}

async fn queries(app: &TestApp, outcome: &str) -> f64 {
    let labels = format!("outcome=\"{outcome}\"");
    Scrape::of(app)
        .await
        .value("chronicle_replica_queries_total", &labels)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_read_from_the_replica_and_a_read_after_a_cursor_waits_for_it_or_falls_back() {
    let db = TestDb::new().await;
    let replica = Replica::of(&db).await;
    let app = app_reading_from(&db, "replica-reads", &replica.url).await;

    // Read after its cursor, a write is listed, served by the replica once it has replayed
    // it (here at once: the test waits for the replay first, so that a loaded machine's
    // slower replay does not make the primary serve it).
    let (first, cursor) = submit(&app, "first").await;
    replica.replayed(position(&cursor)).await;
    assert!(listed(&app, Some(&cursor)).await.contains(&first));
    assert_eq!(queries(&app, "served").await, 1.0);
    assert_eq!(queries(&app, "lagging").await, 0.0);

    let paused = replica.pause().await;
    let (second, cursor) = submit(&app, "second").await;
    // Without a cursor the list comes from the replica, which has not applied the write.
    let without = listed(&app, None).await;
    assert!(
        without.contains(&first) && !without.contains(&second),
        "{without:?}"
    );
    // With it, the query waits for the replica, then the primary serves it.
    let started = Instant::now();
    assert!(listed(&app, Some(&cursor)).await.contains(&second));
    assert!(started.elapsed() >= Duration::from_millis(REPLICA_WAIT_MS));
    assert_eq!(queries(&app, "lagging").await, 1.0);
    eventually(Duration::from_secs(10), "the lag shown", || async {
        let scrape = Scrape::of(&app).await;
        (scrape.value("chronicle_replica_lag_events", "") > 0.0).then_some(())
    })
    .await;

    // Once replay resumes and reaches the write, the replica serves the same read.
    drop(paused);
    replica.replayed(position(&cursor)).await;
    let served = queries(&app, "served").await;
    assert!(listed(&app, Some(&cursor)).await.contains(&second));
    assert_eq!(queries(&app, "served").await, served + 1.0);
    assert_eq!(queries(&app, "lagging").await, 1.0);
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.value("chronicle_replica_up", ""), 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_catches_up_from_the_replica_and_from_the_primary_where_the_replica_lags() {
    const EVENTS: &str = "subscription($after: String) {
        events(after: $after, aggregateTypes: [\"Ledger\"]) { sequence } }";
    let db = TestDb::new().await;
    let replica = Replica::of(&db).await;
    let writer = TestApp::spawn(&db, "writer").await;
    let opened = writer.ledger("l", LedgerCommand::Open).await.expect("open");
    let deposit = || LedgerCommand::Deposit(vec![1; 20]);
    let deposited = writer.ledger("l", deposit()).await.expect("deposit");
    replica
        .replayed(deposited.cursor.expect("cursor").position)
        .await;
    let paused = replica.pause().await;
    writer.ledger("l", deposit()).await.expect("deposit");

    // Started now, the reader's live window begins after all 41 events: the first 21 are on
    // the replica, the last 20 only on the primary.
    let reader = app_reading_from(&db, "reader", &replica.url).await;
    let after = opened.cursor.expect("cursor").to_string();
    let mut subscription =
        Subscription::start(&reader.ws_url(), EVENTS, json!({ "after": after })).await;
    let sequences = sequences(&receive(&mut subscription, 40).await);
    assert_eq!(sequences, (2..=41).collect::<Vec<i64>>());
    let scrape = Scrape::of(&reader).await;
    let source = |source: &str| {
        scrape.value(
            "chronicle_catch_up_reads_total",
            &format!("source=\"{source}\""),
        )
    };
    assert!(source("replica") >= 1.0 && source("primary") >= 1.0);
    drop(paused);
    subscription.close().await;
    reader.stop().await;
    writer.stop().await;
}

#[tokio::test]
async fn queries_are_served_by_the_primary_while_the_replica_does_not_answer() {
    let db = TestDb::new().await;
    // Nothing listens on port 1.
    let app = app_reading_from(&db, "replica-down", &db.url_on_port(1)).await;
    let (id, cursor) = submit(&app, "only").await;
    assert!(listed(&app, None).await.contains(&id));
    assert!(listed(&app, Some(&cursor)).await.contains(&id));
    assert_eq!(queries(&app, "unreachable").await, 2.0);
    let scrape = Scrape::of(&app).await;
    assert_eq!(scrape.value("chronicle_replica_up", ""), 0.0);
    app.stop().await;
}
