//! Archiving: the log exported as NDJSON and imported into an empty store reproduces the same
//! aggregates and read models; an edited archive imports nothing.

use std::io::Cursor;
use std::time::Duration;

use chronicle::archive;
use chronicle_projections::{checkpoint, LogCursor};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::delivery::{app_with_provider, batch_when, submit};
use crate::support::{eventually, Behaviour, Receiver, TestApp, TestDb};

/// The read models an import must reproduce, as sorted text rows.
async fn read_models(pool: &PgPool) -> Vec<String> {
    let mut all = Vec::new();
    for (table, columns) in [
        ("requests", "id, owner, batch_id, custom_id, status, response, error, delivery_rounds, delivery_attempts, version, created_at, updated_at"),
        ("batches", "id, owner, status, request_count, size_bytes, provider_batch_id, version, created_at, updated_at"),
        // Statuses that dropped to zero leave rows that depend on page boundaries.
        ("(SELECT * FROM batch_request_counts WHERE n <> 0)", "batch_id, status, n"),
        ("delivery_attempts", "request_id, round, number, delivery_id, status_code, outcome"),
        ("simulations", "id, owner, status, message_count, tokens_used, feedback, version"),
        ("simulation_messages", "simulation_id, seq, role, text, call_id, at"),
        ("ai_calls", "call_id, service, status, output, prompt_tokens, completion_tokens"),
        ("analytics.usage_daily", "t.*"),
        ("analytics.delivery_daily", "t.*"),
        ("analytics.simulation_daily", "t.*"),
    ] {
        let mut rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT row({columns})::text FROM {table} t"))
                .fetch_all(pool)
                .await
                .expect("read model");
        rows.sort();
        all.push(format!("{table}: {}", rows.join(" | ")));
    }
    all
}

/// Waits until every projector has applied every event.
pub async fn caught_up(pool: &PgPool) {
    let projectors = chronicle::startup::Wiring::standard().projectors.len();
    eventually(Duration::from_secs(60), "projections caught up", || async {
        let status = checkpoint::status(pool, &chronicle::startup::Wiring::standard().projectors)
            .await
            .ok()?;
        (status.len() == projectors && status.iter().all(|s| s.lag == 0)).then_some(())
    })
    .await;
}

/// The whole log exported, once every event the test expects is committed.
async fn exported(pool: &PgPool) -> Vec<u8> {
    let events: u64 = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .expect("count")
        .try_into()
        .expect("count");
    eventually(
        Duration::from_secs(15),
        "the whole log exported",
        || async {
            let mut out = Vec::new();
            let reported = std::sync::Mutex::new(0);
            let progress = |done| *reported.lock().expect("progress") = done;
            let written = archive::export(pool, LogCursor::START, None, &mut out, &progress)
                .await
                .expect("export");
            assert_eq!(
                *reported.lock().expect("progress"),
                written,
                "progress told"
            );
            (written == events).then_some(out)
        },
    )
    .await
}

/// An archive's events in log order, without the positions and transaction ids an import
/// renumbers.
fn comparable(archive: &[u8]) -> Vec<Value> {
    archive
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut event: Value = serde_json::from_slice(line).expect("JSON line");
            if let Some(fields) = event.as_object_mut() {
                fields.remove("position");
                fields.remove("transaction_id");
            }
            event
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_imported_archive_reproduces_the_aggregates_and_read_models() {
    let source = TestDb::new().await;
    let app = app_with_provider(&source, |_| {}).await;
    let receiver = Receiver::start(Behaviour::FailFirst(1)).await;
    let (batch_id, _) = submit(&app, &vec![json!({ "webhookUrl": receiver.url }); 20]).await;
    batch_when(&app, &batch_id, "done").await;
    let created = app
        .graphql(
            "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
            json!({ "i": {
                "learnerId": "l", "ai": { "model": "gpt-4o-mini" },
                "scenario": { "diagnosis": "d", "chiefComplaint": "c", "difficulty": "HARD" },
                "patient": { "name": "n", "age": 40, "sex": "male", "history": "h" } } }),
        )
        .await;
    let id = created["data"]["createSimulation"]["aggregateId"].clone();
    let state = "query($id: UUID!) { simulation(id: $id) { messageCount } }";
    eventually(Duration::from_secs(30), "the opening line", || async {
        let response = app.graphql(state, json!({ "id": id })).await;
        (response["data"]["simulation"]["messageCount"] == 1).then_some(())
    })
    .await;
    // Projections run in the app: let them apply everything before it stops.
    caught_up(&source.pool).await;
    app.stop().await;
    let archive = exported(&source.pool).await;
    let lines = comparable(&archive);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&source.pool)
        .await
        .expect("count");
    assert_eq!(lines.len() as i64, events);
    assert!(lines
        .iter()
        .all(|l| l["hash"].as_str().is_some_and(|h| h.len() == 64)));

    let target = TestDb::new().await;
    let reported = std::sync::Mutex::new(0);
    let progress = |done| *reported.lock().expect("progress") = done;
    let imported = archive::import(&target.pool, Cursor::new(&archive), &progress)
        .await
        .expect("import");
    assert_eq!(
        *reported.lock().expect("progress"),
        imported,
        "progress told"
    );
    assert_eq!(imported as i64, events);
    // Personal data travels sealed: the replica opens it with the source's subject keys
    // (and the same pepper), handed over apart from the archive.
    let keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT subject_ref, wrapped FROM subject_keys")
            .fetch_all(&source.pool)
            .await
            .expect("keys");
    assert!(!keys.is_empty(), "the simulation's learner has a key");
    for (subject, wrapped) in keys {
        sqlx::query("INSERT INTO subject_keys (subject_ref, wrapped) VALUES ($1, $2)")
            .bind(subject)
            .bind(wrapped)
            .execute(&target.pool)
            .await
            .expect("hand over a key");
    }
    let subjects =
        "SELECT aggregate_type, aggregate_id, subject_ref FROM aggregate_subjects ORDER BY 1, 2";
    let recorded: Vec<(String, String, String)> = sqlx::query_as(subjects)
        .fetch_all(&target.pool)
        .await
        .expect("subjects");
    let original: Vec<(String, String, String)> = sqlx::query_as(subjects)
        .fetch_all(&source.pool)
        .await
        .expect("subjects");
    assert_eq!(
        recorded, original,
        "the import records whose data each aggregate holds"
    );
    let replica = TestApp::spawn(&target, "replica").await;
    caught_up(&target.pool).await;
    replica.stop().await;
    assert_eq!(
        read_models(&target.pool).await,
        read_models(&source.pool).await
    );
    assert_eq!(
        comparable(&exported(&target.pool).await),
        comparable(&archive),
        "the same archive again"
    );

    let again = archive::import(&target.pool, Cursor::new(&archive), &|_| {}).await;
    assert!(again.is_err(), "only into an empty store");
}

#[tokio::test]
async fn an_edited_archive_imports_nothing() {
    let source = TestDb::new().await;
    let app = TestApp::spawn(&source, "source").await;
    for id in ["x", "y"] {
        app.ledger(id, crate::support::LedgerCommand::Open)
            .await
            .expect("open");
        app.ledger(id, crate::support::LedgerCommand::Deposit(vec![5, 6]))
            .await
            .expect("deposit");
    }
    app.stop().await;
    let archive = String::from_utf8(exported(&source.pool).await).expect("utf-8");
    let edited = archive.replacen("\"amount\":6", "\"amount\":600", 1);
    assert_ne!(edited, archive);

    let target = TestDb::new().await;
    let refused = archive::import(&target.pool, Cursor::new(edited.as_bytes()), &|_| {})
        .await
        .expect_err("an edited event does not verify");
    assert!(refused.to_string().contains("does not verify"), "{refused}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&target.pool)
        .await
        .expect("count");
    assert_eq!(stored, 0, "all or nothing");
}
