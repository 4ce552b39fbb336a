//! The request streams a submission starts are written by the submission itself, in its
//! transaction: they exist when it is acknowledged. After an upgrade or a rebuild, while the
//! `request_streams` projector is behind, its runner writes them instead, once.

use serde_json::{json, Value};

use crate::support::{eventually, TestApp, TestDb};

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId } }";

fn items(prefix: &str, count: usize) -> Value {
    (0..count)
        .map(|i| {
            json!({ "customId": format!("{prefix}-{i}"), "endpoint": "/v1/chat/completions",
                    "model": "m", "body": { "model": "m", "messages": [] },
                    "delivery": { "poll": true } })
        })
        .collect()
}

async fn submit(app: &TestApp, prefix: &str, count: usize) -> Vec<String> {
    let response = app
        .graphql(SUBMIT_MANY, json!({ "requests": items(prefix, count) }))
        .await;
    response["data"]["submitRequests"]
        .as_array()
        .unwrap_or_else(|| panic!("{response}"))
        .iter()
        .map(|r| r["requestId"].as_str().expect("id").to_owned())
        .collect()
}

/// Per request: how many `RequestSubmitted` events it has, and whether they were written in
/// the transaction of the batch event that carries it.
async fn streams(app: &TestApp, ids: &[String]) -> Vec<(i64, bool)> {
    sqlx::query_as(
        "SELECT count(r.*), coalesce(bool_and(r.transaction_id = b.transaction_id), false)
           FROM unnest($1::text[]) AS id
           LEFT JOIN events r ON r.aggregate_type = 'Request' AND r.aggregate_id = id
                              AND r.event_type = 'RequestSubmitted'
           LEFT JOIN batch_custom_ids c ON c.request_id = id::uuid
           LEFT JOIN events b ON b.aggregate_type = 'Batch'
                              AND b.aggregate_id = c.batch_id::text
                              AND b.event_type = 'BatchRequestsAdded'
                              AND b.payload::text LIKE '%' || id || '%'
          GROUP BY id ORDER BY id",
    )
    .bind(ids)
    .fetch_all(&app.pool)
    .await
    .expect("streams")
}

#[tokio::test]
async fn an_acknowledged_submission_has_started_its_request_streams_in_its_transaction() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "streams").await;
    let ids = submit(&app, "now", 25).await;
    // No waiting: the streams committed with the submission.
    assert_eq!(streams(&app, &ids).await, vec![(1, true); 25]);
    app.stop().await;
}

#[tokio::test]
async fn while_the_projector_is_behind_its_runner_starts_the_streams_once() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "streams").await;
    let early = submit(&app, "early", 5).await;
    app.stop().await;
    // As after a rebuild's reset: the projector has applied nothing.
    sqlx::query(
        "UPDATE projection_checkpoints SET log_position = 0 WHERE name = 'request_streams'",
    )
    .execute(&db.pool)
    .await
    .expect("reset");
    let app = TestApp::spawn(&db, "streams").await;
    let late = submit(&app, "late", 5).await;
    let all: Vec<String> = early.into_iter().chain(late).collect();
    eventually(
        std::time::Duration::from_secs(20),
        "every stream started once",
        || async {
            let found = streams(&app, &all).await;
            found.iter().all(|(count, _)| *count == 1).then_some(())
        },
    )
    .await;
    app.stop().await;
}
