//! Parked events: a projector that keeps failing on one event parks it and, by its policy,
//! goes on or halts; admins see it in `projections`, retry it once the cause is fixed, or
//! skip it, and every action is recorded.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::{error_code, eventually, TestApp, TestDb};

const PROJECTIONS: &str = "{ projections { name inline state lag parkedCount
    parked { cursor aggregateType eventType attempts error halted status resolvedBy } } }";
const RETRY: &str = "mutation($p: String!, $c: String!) {
    retryParked(projection: $p, cursor: $c) { cursor status attempts error resolvedBy } }";
const SKIP: &str = "mutation($p: String!, $c: String!) {
    skipParked(projection: $p, cursor: $c) { cursor status resolvedBy resolvedAt } }";

/// Makes the analytics projector fail on requests to `model` (a cause in the database, as a
/// constraint an operator added would be).
async fn poison(pool: &PgPool, model: &str) {
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.model = '{model}' THEN RAISE EXCEPTION 'poisoned model %', NEW.model; END IF;
             RETURN NEW;
         END $$;
         CREATE OR REPLACE TRIGGER poison BEFORE INSERT ON analytics.request_keys
            FOR EACH ROW EXECUTE FUNCTION test_poison();"
    ))
    .execute(pool)
    .await
    .expect("poison");
}

async fn cure(pool: &PgPool) {
    sqlx::query("DROP TRIGGER poison ON analytics.request_keys")
        .execute(pool)
        .await
        .expect("cure");
}

async fn submit(app: &TestApp, custom_id: &str, model: &str) {
    let submit =
        "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { requestId } }";
    let input = json!({ "customId": custom_id, "endpoint": "/v1/chat/completions",
                        "model": model, "delivery": { "poll": true },
                        "body": { "messages": [{ "role": "user", "content": "hi" }] } });
    let response = app.graphql(submit, json!({ "input": input })).await;
    assert!(response["errors"].is_null(), "submitted: {response}");
}

async fn projection(app: &TestApp, name: &str) -> Value {
    let response = app.graphql(PROJECTIONS, json!({})).await;
    response["data"]["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no projection {name}: {response}"))
}

/// Requests counted per model by the analytics projector.
async fn usage(pool: &PgPool, model: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(requests), 0)::bigint FROM analytics.usage_daily WHERE model = $1",
    )
    .bind(model)
    .fetch_one(pool)
    .await
    .expect("usage")
}

/// Waits until `name` has `count` parked events, the projector idle past them; its state.
async fn parked(app: &TestApp, name: &str, count: usize) -> Value {
    eventually(Duration::from_secs(30), "the event parked", || async {
        let found = projection(app, name).await;
        let parked = found["parked"].as_array().map_or(0, Vec::len);
        (parked == count && found["lag"] == 0).then_some(found)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_event_is_parked_the_rest_go_on_and_a_retry_applies_it_once() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "parked").await;
    poison(&db.pool, "poison").await;
    for (index, model) in ["fine", "fine", "poison", "fine"].iter().enumerate() {
        submit(&app, &format!("r{index}"), model).await;
    }

    // The poisoned request's event is parked with the database's error; the projector
    // (policy: go on) applied the events after it, and the other analytics went on.
    let requests = parked(&app, "analytics_requests", 1).await;
    assert_eq!(requests["state"], "LIVE");
    assert_eq!(requests["parkedCount"], 1);
    let event = &requests["parked"][0];
    assert_eq!(event["aggregateType"], "Request");
    assert_eq!(event["eventType"], "RequestSubmitted");
    assert_eq!(event["status"], "PARKED");
    assert_eq!(event["attempts"], 5);
    assert_eq!(event["halted"], false);
    assert!(
        event["error"]
            .as_str()
            .is_some_and(|e| e.contains("poisoned model poison")),
        "{event}"
    );
    assert_eq!(usage(&db.pool, "fine").await, 3);
    assert_eq!(usage(&db.pool, "poison").await, 0);
    assert_eq!(
        projection(&app, "analytics_batches").await["parkedCount"],
        0
    );
    let cursor = event["cursor"].as_str().expect("cursor").to_owned();
    let at = json!({ "p": "analytics_requests", "c": cursor });

    // While the cause remains, a retry fails, says why, and counts the attempt.
    let failed = app.graphql(RETRY, at.clone()).await;
    assert_eq!(error_code(&failed), "PROJECTION_FAILED", "{failed}");
    let still = &projection(&app, "analytics_requests").await["parked"][0];
    assert_eq!(
        (&still["status"], &still["attempts"]),
        (&json!("PARKED"), &json!(6))
    );

    // Once fixed, a retry applies it, once.
    cure(&db.pool).await;
    let retried = app.graphql(RETRY, at.clone()).await;
    let applied = &retried["data"]["retryParked"];
    assert_eq!(applied["status"], "APPLIED", "{retried}");
    assert_eq!(applied["resolvedBy"], "admin");
    assert_eq!(usage(&db.pool, "poison").await, 1);
    let again = app.graphql(RETRY, at).await;
    assert_eq!(error_code(&again), "INVALID_TRANSITION", "{again}");
    assert_eq!(usage(&db.pool, "poison").await, 1);
    assert_eq!(
        projection(&app, "analytics_requests").await["parkedCount"],
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_skip_is_recorded_with_who_skipped_and_never_applies_the_event() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "skipped").await;
    poison(&db.pool, "poison").await;
    submit(&app, "r0", "poison").await;
    submit(&app, "r1", "fine").await;
    let requests = parked(&app, "analytics_requests", 1).await;
    let cursor = requests["parked"][0]["cursor"].as_str().expect("cursor");
    let at = json!({ "p": "analytics_requests", "c": cursor });
    cure(&db.pool).await;

    let skipped = app.graphql(SKIP, at.clone()).await;
    let record = &skipped["data"]["skipParked"];
    assert_eq!(record["status"], "SKIPPED", "{skipped}");
    assert_eq!(record["resolvedBy"], "admin");
    assert!(record["resolvedAt"].is_string());
    assert_eq!(
        error_code(&app.graphql(RETRY, at.clone()).await),
        "INVALID_TRANSITION"
    );
    assert_eq!(
        error_code(&app.graphql(SKIP, at).await),
        "INVALID_TRANSITION"
    );
    assert_eq!(usage(&db.pool, "poison").await, 0);
    assert_eq!(usage(&db.pool, "fine").await, 1);

    let listed = &projection(&app, "analytics_requests").await["parked"][0];
    assert_eq!(
        (&listed["status"], &listed["resolvedBy"]),
        (&json!("SKIPPED"), &json!("admin"))
    );
    let unknown = json!({ "p": "analytics_requests", "c": "c2.999999" });
    assert_eq!(error_code(&app.graphql(SKIP, unknown).await), "NOT_FOUND");
    let nameless = json!({ "p": "no_such_projection", "c": cursor });
    assert_eq!(error_code(&app.graphql(RETRY, nameless).await), "NOT_FOUND");
    let malformed = json!({ "p": "analytics_requests", "c": "not a cursor" });
    assert_eq!(
        error_code(&app.graphql(SKIP, malformed).await),
        "VALIDATION"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_model_halts_on_its_parked_event_until_an_admin_skips_it() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "halted").await;
    submit(&app, "r0", "fine").await;
    submit(&app, "r1", "poisoned").await;
    submit(&app, "r2", "fine").await;
    // A cause only a replay meets: the requests read model refuses one model's rows.
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.model = 'poisoned' THEN RAISE EXCEPTION 'refused %', NEW.custom_id; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON requests
            FOR EACH ROW EXECUTE FUNCTION test_refuse();",
    )
    .execute(&db.pool)
    .await
    .expect("refuse");
    // The read model falls behind (as after an upgrade that adds it): its runner replays
    // the log into it and meets the cause.
    sqlx::raw_sql(
        "BEGIN;
         SELECT pg_advisory_xact_lock(7163101030252110700);
         DELETE FROM requests;
         UPDATE projection_checkpoints SET log_position = 0, events_applied = 0
          WHERE name = 'requests';
         SELECT pg_notify('chronicle_resets', 'requests');
         COMMIT;",
    )
    .execute(&db.pool)
    .await
    .expect("behind");
    let halted = eventually(Duration::from_secs(30), "the read model halted", || async {
        let found = projection(&app, "requests").await;
        (found["state"] == "HALTED").then_some(found)
    })
    .await;
    let event = &halted["parked"][0];
    assert_eq!(
        (&event["halted"], &event["status"]),
        (&json!(true), &json!("PARKED"))
    );
    assert!(
        halted["lag"].as_i64().is_some_and(|lag| lag > 0),
        "{halted}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(rows, 1, "nothing applied past the parked event");

    let cursor = event["cursor"].as_str().expect("cursor");
    let skipped = app
        .graphql(SKIP, json!({ "p": "requests", "c": cursor }))
        .await;
    assert_eq!(
        skipped["data"]["skipParked"]["status"], "SKIPPED",
        "{skipped}"
    );
    let live = eventually(
        Duration::from_secs(30),
        "the read model live again",
        || async {
            let found = projection(&app, "requests").await;
            (found["state"] == "LIVE" && found["lag"] == 0).then_some(found)
        },
    )
    .await;
    assert_eq!(live["parkedCount"], 0);
    let ids: Vec<String> = sqlx::query_scalar("SELECT custom_id FROM requests ORDER BY custom_id")
        .fetch_all(&db.pool)
        .await
        .expect("ids");
    assert_eq!(ids, ["r0", "r2"]);
    app.stop().await;
}
