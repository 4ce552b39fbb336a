//! Tamper evidence: every append is chained by the database, and verification finds the
//! first broken link, exactly where a payload was edited or an event removed.

use chronicle::audit;
use serde_json::json;

use crate::support::{LedgerCommand, TestApp, TestDb};

const VERIFY: &str = "{ verifyAuditChain { intact eventsChecked brokenAggregates
    firstBreak { position aggregateType aggregateId sequence reason } } }";

async fn position(app: &TestApp, id: &str, sequence: i64) -> i64 {
    sqlx::query_scalar(
        "SELECT position FROM events WHERE aggregate_type = 'Ledger' AND aggregate_id = $1
            AND sequence = $2",
    )
    .bind(id)
    .bind(sequence)
    .fetch_one(&app.pool)
    .await
    .expect("position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_payload_breaks_the_chain_at_exactly_that_event() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "audit").await;
    for id in ["a", "b"] {
        app.ledger(id, LedgerCommand::Open).await.expect("open");
        // Several events in one append: each is chained to the one before it.
        app.ledger(id, LedgerCommand::Deposit(vec![10, 20, 30]))
            .await
            .expect("deposit");
    }
    let items: Vec<_> = (0..50)
        .map(|i| {
            json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                         "model": "m", "body": { "messages": [] }, "delivery": { "poll": true } })
        })
        .collect();
    let submit =
        "mutation($r: [SubmitRequestInput!]!) { submitRequests(requests: $r) { batchId } }";
    let response = app.graphql(submit, json!({ "r": items })).await;
    assert!(response["errors"].is_null(), "{response}");

    let intact = audit::verify(&app.pool, None).await.expect("verify");
    assert_eq!(intact.first_break, None);
    assert!(intact.events_checked >= 8 + 2);
    let response = app.graphql(VERIFY, json!({})).await;
    assert_eq!(
        response["data"]["verifyAuditChain"]["intact"], true,
        "{response}"
    );

    let edited = position(&app, "b", 3).await;
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{Deposited,amount}', '2000')
          WHERE aggregate_type = 'Ledger' AND aggregate_id = 'b' AND sequence = 3",
    )
    .execute(&app.pool)
    .await
    .expect("tamper");
    let found = audit::verify(&app.pool, None).await.expect("verify");
    let broken = found.first_break.expect("the edit is found");
    assert_eq!((broken.aggregate_id.as_str(), broken.sequence), ("b", 3));
    assert_eq!(broken.position, edited);
    assert_eq!(found.broken_aggregates, 1);
    assert_eq!(
        audit::verify(&app.pool, Some(("Ledger", "a")))
            .await
            .expect("verify a")
            .first_break,
        None,
        "the other aggregate's chain is whole"
    );

    let response = app.graphql(VERIFY, json!({})).await;
    let verification = &response["data"]["verifyAuditChain"];
    assert_eq!(verification["intact"], false);
    assert_eq!(verification["firstBreak"]["position"], edited);

    // A removed event breaks the chain of the events after it.
    sqlx::query("DELETE FROM events WHERE aggregate_type = 'Ledger' AND aggregate_id = 'a' AND sequence = 2")
        .execute(&app.pool)
        .await
        .expect("remove");
    let found = audit::verify(&app.pool, Some(("Ledger", "a")))
        .await
        .expect("verify");
    let broken = found.first_break.expect("the gap is found");
    assert_eq!(broken.sequence, 3);
    assert!(broken.reason.contains("missing"), "{}", broken.reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_someone_elses_or_a_half_named_aggregate_is_refused() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "audit").await;
    let query = "query($t: String, $i: String) { verifyAuditChain(aggregateType: $t, aggregateId: $i) { intact } }";
    let missing = app
        .graphql(
            query,
            json!({ "t": "Batch", "i": "00000000-0000-0000-0000-000000000000" }),
        )
        .await;
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");
    let half = app.graphql(query, json!({ "t": "Batch" })).await;
    assert_eq!(half["errors"][0]["extensions"]["code"], "VALIDATION");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_checkpoint_catches_a_rewrite_that_recomputes_the_hash_chain() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "audit").await;
    app.ledger("c", LedgerCommand::Open).await.expect("open");
    app.ledger("c", LedgerCommand::Deposit(vec![1, 2, 3]))
        .await
        .expect("deposit");
    let key = b"audit-key".as_slice();
    // The log's horizon may hold the newest events back a moment: checkpoint until all six
    // (the ledger's four and the bootstrap admin's two) are covered, perhaps by more than one
    // checkpoint.
    let mut covered = 0;
    for _ in 0..150 {
        covered += audit::checkpoint(&app.pool, Some(key))
            .await
            .expect("checkpoint");
        if covered == 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(covered, 6);
    app.ledger("c", LedgerCommand::Withdraw(1))
        .await
        .expect("withdraw");
    // One checkpoint, or more when the horizon held events back from the first.
    let (checked, intact) = audit::verify_checkpoints(&app.pool, Some(key))
        .await
        .expect("verify");
    assert!(checked >= 1);
    assert_eq!(intact, None);
    let (_, forged) = audit::verify_checkpoints(&app.pool, Some(b"other".as_slice()))
        .await
        .expect("verify");
    assert!(forged.is_some_and(|b| b.reason.contains("signature")));

    // Rewrite an event, then recompute its aggregate's chain as the trigger would.
    sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload, '{Deposited,amount}', '99')
          WHERE aggregate_type = 'Ledger' AND aggregate_id = 'c' AND sequence = 3",
    )
    .execute(&app.pool)
    .await
    .expect("rewrite");
    for sequence in 3..=5 {
        sqlx::query(
            "UPDATE events e SET hash = sha256((SELECT p.hash FROM events p
                 WHERE p.aggregate_type = e.aggregate_type AND p.aggregate_id = e.aggregate_id
                   AND p.sequence = e.sequence - 1) || event_content(e))
              WHERE aggregate_type = 'Ledger' AND aggregate_id = 'c' AND sequence = $1",
        )
        .bind(sequence)
        .execute(&app.pool)
        .await
        .expect("re-chain");
    }
    let chain = audit::verify(&app.pool, None).await.expect("verify chain");
    assert_eq!(
        chain.first_break, None,
        "the rewrite fooled the chain alone"
    );
    let (_, broken) = audit::verify_checkpoints(&app.pool, Some(key))
        .await
        .expect("verify");
    let broken = broken.expect("the checkpoint catches it");
    assert!(broken.reason.contains("changed"), "{}", broken.reason);
}
