//! The asynchronous projectors of an instance run as one set, one transaction per page: a
//! projector that fails on an event is set aside and retried, and the others go on.

use std::time::Duration;

use crate::support::{LedgerCommand, TestApp, TestDb};

async fn checkpoint_of(db: &TestDb, name: &str) -> i64 {
    sqlx::query_scalar("SELECT log_position FROM projection_checkpoints WHERE name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await
        .expect("checkpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_failing_on_an_event_stays_before_it_while_the_others_go_on() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "projector-sets").await;
    // A batch event no batch projector can read (written around the command path).
    let bad: i64 = sqlx::query_scalar(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata)
         VALUES ('Batch', '00000000-0000-0000-0000-00000000000b', 1, 'BatchClosed', '1.0.0',
                 '{\"Closed\": \"not a batch\"}', '{}')
         RETURNING log_position",
    )
    .fetch_one(&db.pool)
    .await
    .expect("malformed event");

    app.ledger("after", LedgerCommand::Open)
        .await
        .expect("open");
    app.projected("after", 1).await;

    assert!(checkpoint_of(&db, "aggregate_index").await > bad);
    assert!(
        checkpoint_of(&db, "batches").await < bad,
        "the failing projector did not skip the event"
    );
    // Set aside, not stopped: after its retry pause it fails again, without holding the rest.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    app.ledger("later", LedgerCommand::Open)
        .await
        .expect("open");
    app.projected("later", 1).await;
    assert!(checkpoint_of(&db, "batches").await < bad);
    app.stop().await;
}
