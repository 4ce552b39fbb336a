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
