//! `kill -9` during a rebuild beside the live tables: the live read model never serves
//! partial data, and the next start resumes the rebuild where its copies stood.

use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use crate::support::{eventually, Server, TestDb};

/// Request events appended straight to the log (copies of a real submission), so that the
/// rebuild has enough to load for the kill to land in it.
const SEEDED: i64 = 30_000;

async fn requests_model(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT r::text FROM requests r ORDER BY r.id")
        .fetch_all(pool)
        .await
        .expect("requests read model")
}

/// Where the rebuild's copies stand, if it is still going.
async fn copies_at(pool: &PgPool) -> Option<i64> {
    sqlx::query_scalar("SELECT log_position FROM projection_rebuilds WHERE projection = 'requests'")
        .fetch_optional(pool)
        .await
        .expect("projection_rebuilds")
}

async fn seed(server: &Server, pool: &PgPool) {
    let submitted = server
        .graphql(
            "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId } }",
            json!({ "i": { "customId": "real", "endpoint": "/v1/chat/completions",
                           "model": "gpt-4o-mini", "delivery": { "poll": true },
                           "body": { "messages": [{ "role": "user", "content": "hi" }] } } }),
        )
        .await;
    assert!(submitted["errors"].is_null(), "{submitted}");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         SELECT 'Request', s.id::text, 1, t.event_type, t.event_version,
                jsonb_set(jsonb_set(t.payload, '{Submitted,request_id}', to_jsonb(s.id)),
                          '{Submitted,spec,custom_id}', to_jsonb('seed-' || s.id)),
                t.metadata
           FROM (SELECT * FROM events WHERE event_type = 'RequestSubmitted' LIMIT 1) t,
                (SELECT gen_random_uuid() AS id FROM generate_series(1, $1)) s",
    )
    .bind(SEEDED)
    .execute(pool)
    .await
    .expect("seed");
    server.caught_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_while_rebuilding_the_live_model_stays_whole_and_the_rebuild_resumes() {
    let db = TestDb::new().await;
    let mut server = Server::start(&db, &[]).await;
    seed(&server, &db.pool).await;
    let live = requests_model(&db.pool).await;
    assert_eq!(live.len(), usize::try_from(SEEDED + 1).expect("size"));
    // A reader in a long transaction holds the swap off until it ends.
    let mut reader = db.hold_requests_open().await;

    let asked = server
        .graphql(
            "mutation { rebuildProjection(name: \"requests\") { state } }",
            json!({}),
        )
        .await;
    assert_eq!(
        asked["data"]["rebuildProjection"]["state"], "REBUILDING",
        "{asked}"
    );
    let killed_at = eventually(Duration::from_secs(60), "the copies loading", || async {
        copies_at(&db.pool).await.filter(|at| *at > 0)
    })
    .await;
    server.kill().await;
    eprintln!("killed with the copies at log position {killed_at}");
    assert_eq!(
        requests_model(&db.pool).await,
        live,
        "the live model after the kill"
    );

    server.restart().await;
    // The reader still holds the swap off: the rebuild is there all along, and its copies
    // never go back before where the kill found them.
    let mut lowest = i64::MAX;
    for _ in 0..40 {
        let at = copies_at(&db.pool)
            .await
            .expect("the rebuild is still going");
        lowest = lowest.min(at);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lowest >= killed_at,
        "resumed from {lowest}, not from {killed_at}"
    );
    let listed = server
        .graphql("{ requests(first: 1000) { nodes { id } } }", json!({}))
        .await;
    let nodes = listed["data"]["requests"]["nodes"].as_array().map(Vec::len);
    assert_eq!(
        nodes,
        Some(1000),
        "the live model answers in full while rebuilding"
    );

    sqlx::raw_sql("COMMIT")
        .execute(&mut reader)
        .await
        .expect("reader ends");
    eventually(
        Duration::from_secs(120),
        "the copies swapped in",
        || async { copies_at(&db.pool).await.is_none().then_some(()) },
    )
    .await;
    assert_eq!(requests_model(&db.pool).await, live, "the rebuilt model");
    server.stop().await;
}
