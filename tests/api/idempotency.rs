//! Commands with an idempotency key take effect once and return their first outcome.

use chronicle::command::{CommandError, CommandReceipt, IdempotencyKey};
use chronicle_aggregates::ErrorCode;
use futures::future::join_all;
use serde_json::json;

use crate::support::{Ledger, LedgerCommand, TestApp, TestDb};

async fn deposit_once(
    app: &TestApp,
    key: &str,
    ledger: &str,
    amount: i64,
) -> Result<CommandReceipt, CommandError> {
    let request = json!({ "ledger": ledger, "amount": amount });
    let key = IdempotencyKey::new(key.to_owned(), &request).expect("key");
    app.commands
        .execute::<Ledger>(
            &crate::support::app_context(),
            ledger,
            LedgerCommand::Deposit(vec![amount]),
            &(),
            Some(key),
        )
        .await
}

async fn event_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Client'")
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_racing_copies_of_a_command_take_effect_once_and_share_the_outcome() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "idempotency").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    let outcomes = join_all((0..8).map(|_| deposit_once(&app, "key-1", "l", 10))).await;
    let receipts: Vec<CommandReceipt> = outcomes.into_iter().map(|o| o.expect("ok")).collect();
    assert!(receipts.iter().all(|r| r == &receipts[0]), "{receipts:?}");
    assert_eq!(receipts[0].version, 2);
    assert_eq!(event_count(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "idempotency").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    deposit_once(&app, "key-1", "l", 10).await.expect("first");
    let reused = deposit_once(&app, "key-1", "l", 99).await;
    assert!(
        matches!(reused, Err(CommandError::IdempotencyKeyReused(_))),
        "{reused:?}"
    );
    assert_eq!(event_count(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn a_rejection_is_the_first_outcome_and_is_returned_again() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "idempotency").await;
    let first = deposit_once(&app, "key-1", "l", 10).await;
    assert!(
        matches!(
            &first,
            Err(CommandError::Rejected {
                code: ErrorCode::InvalidTransition,
                ..
            })
        ),
        "{first:?}"
    );
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    let again = deposit_once(&app, "key-1", "l", 10).await;
    assert_eq!(format!("{again:?}"), format!("{first:?}"));
    assert_eq!(event_count(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn an_outcome_lost_in_a_crash_is_recovered_from_the_events() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "idempotency").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    let first = deposit_once(&app, "key-1", "l", 10).await.expect("first");
    // As if the process died after appending the events but before recording the outcome.
    sqlx::query("DELETE FROM idempotency_keys")
        .execute(&app.pool)
        .await
        .expect("forget");
    let again = deposit_once(&app, "key-1", "l", 10).await.expect("again");
    assert_eq!(again, first);
    assert_eq!(event_count(&app).await, 2);
    app.stop().await;
}

#[tokio::test]
async fn keys_that_are_empty_or_too_long_are_invalid() {
    assert!(IdempotencyKey::new(String::new(), &1).is_err());
    assert!(IdempotencyKey::new("k".repeat(201), &1).is_err());
    assert!(IdempotencyKey::new("k".repeat(200), &1).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_keyed_commands_at_once_do_not_starve_the_pool() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "idempotency").await;
    let ledgers: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    for ledger in &ledgers {
        app.ledger(ledger, LedgerCommand::Open).await.expect("open");
    }
    let outcomes = join_all(
        ledgers
            .iter()
            .map(|ledger| deposit_once(&app, ledger, ledger, 1)),
    )
    .await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(event_count(&app).await, 80);
    app.stop().await;
}
