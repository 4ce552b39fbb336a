//! Analytics: the projection tables analysts query, their GraphQL views scoped to the caller,
//! the read-only role, and rebuilds from zero that equal the incremental result.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::archive::caught_up;
use crate::delivery::{app_with_provider, batch_when, submit};
use crate::support::{eventually, Behaviour, Receiver, TestDb};

/// Every analytics table, as sorted text rows.
async fn snapshot(pool: &PgPool) -> Vec<String> {
    let mut rows = Vec::new();
    for table in [
        "request_keys",
        "usage_daily",
        "delivery_daily",
        "batch_turnaround",
        "simulation_keys",
        "simulation_daily",
    ] {
        let mut table_rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM analytics.{table} t"))
                .fetch_all(pool)
                .await
                .expect("analytics table");
        table_rows.sort();
        rows.push(format!("{table}: {}", table_rows.join(" | ")));
    }
    rows
}

pub async fn rebuild(db: &TestDb, name: &str) {
    crate::projections::rebuild_here(db, name).await;
}

/// A price table for the emulator's model `m`, in a file of its own.
fn price_table() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("chronicle-prices-{}.toml", uuid::Uuid::new_v4()));
    let table = "[[prices]]\nprovider = \"openai\"\nmodel = \"m\"\nfrom = \"2025-01-01\"
input = 2.0\ncached_input = 1.0\noutput = 8.0\n";
    std::fs::write(&path, table).expect("price table");
    path
}

/// What one emulated result costs by [`price_table`], in billionths of a dollar: 3 uncached
/// prompt tokens at $2, 2 cached at $1 and 5 completion tokens at $8 per million, halved.
const RESULT_NANO_USD: f64 = (3.0 * 2.0 + 2.0 * 1.0 + 5.0 * 8.0) * 1000.0 * 0.5;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_delivery_turnaround_and_simulations_add_up_and_rebuild_identically() {
    let db = TestDb::new().await;
    let prices = price_table();
    let app = app_with_provider(&db, |config| config.prices_file = Some(prices.clone())).await;
    let receiver = Receiver::start(Behaviour::FailFirst(1)).await;
    let mut deliveries = vec![json!({ "webhookUrl": receiver.url }); 10];
    deliveries[0] = json!({ "poll": true });
    let (batch_id, requests) = submit(&app, &deliveries).await;
    batch_when(&app, &batch_id, "delivering").await;

    let simulation = app
        .graphql(
            "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
            json!({ "i": {
                "learnerId": "l", "ai": { "model": "gpt-4o-mini" },
                "scenario": { "diagnosis": "d", "chiefComplaint": "c", "difficulty": "EASY" },
                "patient": { "name": "n", "age": 40, "sex": "male", "history": "h" } } }),
        )
        .await;
    let id = simulation["data"]["createSimulation"]["aggregateId"]
        .as_str()
        .expect("simulation")
        .to_owned();
    let state = "query($id: UUID!) { simulation(id: $id) { status messageCount pendingService } }";
    eventually(Duration::from_secs(30), "opening line", || async {
        let s = app.graphql(state, json!({ "id": id })).await;
        (s["data"]["simulation"]["messageCount"] == 1).then_some(())
    })
    .await;
    let end = "mutation($id: UUID!) { endSimulation(simulationId: $id) { version } }";
    app.graphql(end, json!({ "id": id })).await;

    let today = Utc::now().date_naive();
    let range =
        json!({ "from": today.to_string(), "to": (today + chrono::Days::new(1)).to_string() });
    let query = "query($from: NaiveDate!, $to: NaiveDate!) {
        usage(from: $from, to: $to) { model requests succeeded failed inputTokens
                                      cachedInputTokens outputTokens costUsd unpriced }
        deliveryOutcomes(from: $from, to: $to) { attempts succeededAttempts successRate delivered }
        batchTurnaround(from: $from, to: $to) { batches providerP50Seconds }
        simulationActivity(from: $from, to: $to) { sessions messages aiCalls feedbacks averageScore } }";
    let views: Value = eventually(Duration::from_secs(60), "analytics", || async {
        let response = app.graphql(query, range.clone()).await;
        let data = response["data"].clone();
        let settled = data["deliveryOutcomes"][0]["delivered"] == 9
            && data["simulationActivity"][0]["feedbacks"] == 1;
        settled.then_some(data)
    })
    .await;
    assert_eq!(
        views["usage"],
        json!([{ "model": "m", "requests": 10, "succeeded": 10, "failed": 0,
                 "inputTokens": 50, "cachedInputTokens": 20, "outputTokens": 50,
                 "costUsd": 10.0 * RESULT_NANO_USD / 1e9, "unpriced": 0 }])
    );
    let request = &requests[0];
    let priced = app
        .graphql(
            "query($id: UUID!) { request(id: $id) { cost { usd price } } }",
            json!({ "id": request }),
        )
        .await;
    assert_eq!(
        priced["data"]["request"]["cost"],
        json!({ "usd": RESULT_NANO_USD / 1e9, "price": "openai/m@2025-01-01" }),
        "{priced}"
    );
    assert_eq!(
        views["deliveryOutcomes"],
        json!([{ "attempts": 18, "succeededAttempts": 9, "successRate": 0.5, "delivered": 9 }]),
        "each webhook result failed once, then arrived"
    );
    assert_eq!(views["batchTurnaround"][0]["batches"], 1);
    assert!(views["batchTurnaround"][0]["providerP50Seconds"].as_f64() >= Some(0.0));
    assert_eq!(
        views["simulationActivity"],
        json!([{ "sessions": 1, "messages": 1, "aiCalls": 2, "feedbacks": 1, "averageScore": 3.5 }])
    );
    let bad = app
        .graphql(
            query,
            json!({ "from": today.to_string(), "to": today.to_string() }),
        )
        .await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "VALIDATION");

    caught_up(&db.pool).await;
    app.stop().await;
    let incremental = snapshot(&db.pool).await;
    for name in [
        "analytics_requests",
        "analytics_batches",
        "analytics_simulations",
    ] {
        rebuild(&db, name).await;
    }
    assert_eq!(snapshot(&db.pool).await, incremental);
    std::fs::remove_file(prices).expect("remove the price table");
}

#[tokio::test]
async fn the_analytics_role_reads_analytics_and_nothing_else() {
    let db = TestDb::new().await;
    let mut tx = db.pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL ROLE chronicle_analytics")
        .execute(&mut *tx)
        .await
        .expect("role");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.batch_turnaround_daily")
        .fetch_one(&mut *tx)
        .await
        .expect("the role reads analytics");
    assert_eq!(rows, 0);
    let mut savepoint = sqlx::Connection::begin(&mut *tx).await.expect("savepoint");
    let events = sqlx::query("SELECT 1 FROM events LIMIT 1")
        .execute(&mut *savepoint)
        .await;
    assert!(events.is_err(), "the event log is not the analysts'");
    savepoint.rollback().await.expect("rollback");
    let write = sqlx::query("DELETE FROM analytics.usage_daily")
        .execute(&mut *tx)
        .await;
    assert!(write.is_err(), "read only");
}
