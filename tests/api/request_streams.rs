//! The request streams a submission starts are written by the submission itself, in its
//! transaction: they exist when it is acknowledged. The upgrade to this way starts, once, the
//! streams an earlier version had not derived yet.

use chronicle_aggregates::batch::{BatchEntry, BatchEvent, BatchKey};
use chronicle_aggregates::request::{RequestEvent, RequestSpec};
use chronicle_aggregates::{Delivery, Endpoint};
use cqrs_es::DomainEvent;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{TestApp, TestDb};

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

/// The events of a submission recorded before submissions started their streams themselves:
/// a batch opened by `owner` with one request, whose stream was never started.
async fn record_unstarted_submission(pool: &sqlx::PgPool, owner: &str) -> (Uuid, Uuid) {
    let (batch_id, request_id) = (Uuid::now_v7(), Uuid::now_v7());
    let at = chrono::Utc::now();
    let key = BatchKey {
        owner: owner.into(),
        endpoint: Endpoint::ChatCompletions,
        model: "m".into(),
    };
    let spec = RequestSpec {
        custom_id: "old-1".into(),
        endpoint: Endpoint::ChatCompletions,
        model: "m".into(),
        body: json!({ "model": "m", "messages": [] }),
        delivery: Delivery::Poll,
    };
    let events = [
        BatchEvent::Opened { batch_id, key, at },
        BatchEvent::RequestsAdded {
            entries: vec![BatchEntry { request_id, spec }],
            size_bytes: 10,
            at,
        },
    ];
    for (sequence, event) in (1_i64..).zip(&events) {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ('Batch', $1, $2, $3, $4, $5, '{}')",
        )
        .bind(batch_id.to_string())
        .bind(sequence)
        .bind(event.event_type())
        .bind(event.event_version())
        .bind(serde_json::to_value(event).expect("payload"))
        .execute(pool)
        .await
        .expect("recorded");
    }
    (batch_id, request_id)
}

#[tokio::test]
async fn the_upgrade_starts_the_streams_an_earlier_version_left_unstarted_once() {
    let db = TestDb::new().await;
    let (batch_id, request_id) = record_unstarted_submission(&db.pool, "client-a").await;
    let repair = include_str!(
        "../../migrations/20261207000014_request_streams_started_by_their_submission.sql"
    );
    for _ in 0..2 {
        sqlx::raw_sql(repair)
            .execute(&db.pool)
            .await
            .expect("repair");
    }
    let started: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Request' AND aggregate_id = $1",
    )
    .bind(request_id.to_string())
    .fetch_all(&db.pool)
    .await
    .expect("started");
    assert_eq!(started.len(), 1, "started once: {started:?}");
    let submitted: RequestEvent = serde_json::from_value(started[0].clone()).expect("decodes");
    let RequestEvent::Submitted {
        request_id: id,
        owner,
        batch_id: batch,
        spec,
        ..
    } = submitted
    else {
        panic!("not a submission: {submitted:?}");
    };
    assert_eq!(
        (id, owner.as_str(), batch),
        (request_id, "client-a", batch_id)
    );
    assert_eq!(spec.custom_id, "old-1");
}
