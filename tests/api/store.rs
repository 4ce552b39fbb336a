//! The event store: upcasting old events, snapshots, metadata, optimistic concurrency.

use chronicle::command::CommandError;
use chronicle_aggregates::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use crate::support::{LedgerCommand, TestApp, TestDb};

const LOG: &str =
    "query($after: String) { eventLog(after: $after, first: 1000, aggregateTypes: [\"Ledger\"]) {
    edges { cursor node { aggregateId sequence eventType eventVersion payload
                          metadata { actor correlationId causationId commandId } } }
    pageInfo { hasNextPage } } }";

fn insufficient(result: &Result<chronicle::command::CommandReceipt, CommandError>) -> String {
    match result {
        Err(CommandError::Rejected {
            code: ErrorCode::Validation,
            message,
        }) => message.clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn a_stored_v1_event_is_read_as_v2_by_the_store_and_the_log() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "upcasting").await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Ledger', 'old', 1, 'Opened', '1.0', '\"Opened\"', '{}'),
                ('Ledger', 'old', 2, 'Deposited', '1.0', '{\"Deposited\": {\"amount\": 5}}', '{}')",
    )
    .execute(&db.pool)
    .await
    .expect("v1 events");

    // Loading succeeds only if the v1 payload (without `memo`) was upcast.
    app.ledger("old", LedgerCommand::Withdraw(5))
        .await
        .expect("withdraw");
    let overdraw = app.ledger("old", LedgerCommand::Withdraw(1)).await;
    assert_eq!(insufficient(&overdraw), "balance 0 does not cover 1");

    let edges = app.log_edges(LOG, 3).await;
    let deposited = &edges[1]["node"];
    assert_eq!(deposited["eventType"], "Deposited", "{edges:?}");
    assert_eq!(deposited["eventVersion"], "2.0.0");
    assert_eq!(
        deposited["payload"],
        json!({ "Deposited": { "amount": 5, "memo": "" } })
    );
    app.stop().await;
}

#[tokio::test]
async fn snapshots_restore_the_same_state_as_a_full_replay() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_with(&db, "snapshots", vec![("Ledger".into(), 2)]).await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    for _ in 0..5 {
        app.ledger("l", LedgerCommand::Deposit(vec![1]))
            .await
            .expect("deposit");
    }
    let snapshot: i64 = sqlx::query_scalar(
        "SELECT last_sequence FROM snapshots WHERE aggregate_type = 'Ledger' AND aggregate_id = 'l'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("a snapshot was written");
    assert!(snapshot >= 4, "snapshot at {snapshot}");
    app.ledger("l", LedgerCommand::Withdraw(5))
        .await
        .expect("withdraw");
    let overdraw = app.ledger("l", LedgerCommand::Withdraw(1)).await;
    assert_eq!(insufficient(&overdraw), "balance 0 does not cover 1");
    app.stop().await;
}

#[tokio::test]
async fn every_event_carries_actor_correlation_and_command_ids() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "metadata").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    app.ledger("l", LedgerCommand::Deposit(vec![1, 2]))
        .await
        .expect("deposit");
    let edges = app.log_edges(LOG, 3).await;
    for edge in &edges {
        let metadata = &edge["node"]["metadata"];
        assert_eq!(metadata["actor"], "tester");
        assert_eq!(metadata["correlationId"], "test-correlation");
        assert_eq!(metadata["causationId"], json!(null));
        assert!(metadata["commandId"]
            .as_str()
            .is_some_and(|id| id.len() == 36));
    }
    // One command, one command id; two commands, two.
    assert_ne!(
        edges[0]["node"]["metadata"]["commandId"],
        edges[1]["node"]["metadata"]["commandId"]
    );
    assert_eq!(
        edges[1]["node"]["metadata"]["commandId"],
        edges[2]["node"]["metadata"]["commandId"]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_aggregate_either_apply_or_conflict() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "concurrency").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    let outcomes =
        join_all((0..16).map(|_| app.ledger("l", LedgerCommand::Deposit(vec![1])))).await;
    let applied = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Ok(_) | Err(CommandError::Conflict))),
        "{outcomes:?}"
    );
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT sequence FROM events WHERE aggregate_id = 'l' ORDER BY sequence",
    )
    .fetch_all(&db.pool)
    .await
    .expect("sequences");
    assert_eq!(versions, (1..=1 + applied as i64).collect::<Vec<_>>());
    app.stop().await;
}
