//! Group commit: commands in flight share one transaction, each learns where its own events
//! landed, and one append's conflict fails that append alone.
//!
//! The test holds the log lock (as an appending transaction would) so that appends queue
//! behind a first one, deterministically, then lets them go.

use std::time::Duration;

use chronicle::command::{CommandError, CommandReceipt};
use chronicle::store::LOG_LOCK;
use futures::future::join_all;
use sqlx::pool::PoolConnection;
use sqlx::Postgres;

use crate::support::{eventually, LedgerCommand, TestApp, TestDb};

/// Holds the log lock on a connection of its own until released.
struct HeldLog(PoolConnection<Postgres>);

impl HeldLog {
    async fn take(db: &TestDb) -> Self {
        let mut conn = db.pool.acquire().await.expect("connection");
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOG_LOCK)
            .execute(&mut *conn)
            .await
            .expect("log lock");
        Self(conn)
    }

    /// Waits until an append waits for the lock.
    async fn until_an_append_waits(db: &TestDb) {
        eventually(Duration::from_secs(15), "an append waiting", || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
            )
            .fetch_one(&db.pool)
            .await
            .expect("pg_locks");
            (waiting > 0).then_some(())
        })
        .await;
    }

    /// Runs `sql` as the holder (an insert into `events` takes the lock it holds already),
    /// then releases the lock.
    async fn run_then_release(mut self, sql: &str) {
        sqlx::query(sql).execute(&mut *self.0).await.expect(sql);
        self.release().await;
    }

    async fn release(mut self) {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(LOG_LOCK)
            .execute(&mut *self.0)
            .await
            .expect("unlock");
    }
}

fn ok(outcomes: &[Result<CommandReceipt, CommandError>]) -> Vec<&CommandReceipt> {
    outcomes
        .iter()
        .map(|o| {
            o.as_ref()
                .unwrap_or_else(|e| panic!("{e:?} in {outcomes:?}"))
        })
        .collect()
}

/// Time for commands sent together to load, decide and queue their appends.
const QUEUEING: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_in_flight_share_a_commit_and_each_learns_where_its_events_landed() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "group-commit").await;
    let held = HeldLog::take(&db).await;
    let ids: Vec<String> = (0..32).map(|n| format!("g{n}")).collect();
    let (outcomes, ()) = tokio::join!(
        join_all(ids.iter().map(|id| app.ledger(id, LedgerCommand::Open))),
        async {
            HeldLog::until_an_append_waits(&db).await;
            tokio::time::sleep(QUEUEING).await;
            held.release().await;
        }
    );

    for (id, receipt) in ids.iter().zip(ok(&outcomes)) {
        let position: i64 = sqlx::query_scalar(
            "SELECT log_position FROM events WHERE aggregate_id = $1 AND sequence = 1",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .expect("event");
        assert_eq!(receipt.cursor.map(|c| c.position), Some(position), "{id}");
        assert_eq!(receipt.version, 1, "{id}");
    }
    // The first append waited alone; the others queued behind it and went together.
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xmin::text) FROM events WHERE aggregate_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await
    .expect("transactions");
    assert!(
        transactions <= 4,
        "32 queued commands took {transactions} transactions"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_fails_its_own_append_alone_and_the_command_decides_again() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "group-conflict").await;
    app.ledger("c", LedgerCommand::Open).await.expect("open c");
    let held = HeldLog::take(&db).await;
    let ids: Vec<String> = (0..16).map(|n| format!("n{n}")).collect();
    let group = async {
        HeldLog::until_an_append_waits(&db).await;
        let opens = ids.iter().map(|id| app.ledger(id, LedgerCommand::Open));
        let deposit = app.ledger("c", LedgerCommand::Deposit(vec![3]));
        let forge_and_release = async {
            tokio::time::sleep(QUEUEING).await;
            // Another writer takes the sequence the queued deposit decided on.
            held.run_then_release(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                     event_version, payload, metadata)
                 VALUES ('Ledger', 'c', 2, 'Deposited', '2.0.0',
                         '{\"Deposited\": {\"amount\": 7, \"memo\": \"other\"}}', '{}')",
            )
            .await;
        };
        tokio::join!(join_all(opens), deposit, forge_and_release)
    };
    let (blocker, (opens, deposit, ())) =
        tokio::join!(app.ledger("blocker", LedgerCommand::Open), group);

    blocker.expect("blocker");
    assert_eq!(ok(&opens).len(), ids.len());
    assert_eq!(deposit.expect("deposit, decided again").version, 3);
    let streams: Vec<(String, i64)> = sqlx::query_as(
        "SELECT aggregate_id, count(*) FROM events
          WHERE aggregate_type = 'Ledger' GROUP BY aggregate_id ORDER BY aggregate_id",
    )
    .fetch_all(&db.pool)
    .await
    .expect("streams");
    let mut expected: Vec<(String, i64)> = ids.iter().map(|id| (id.clone(), 1)).collect();
    expected.extend([("blocker".to_owned(), 1), ("c".to_owned(), 3)]);
    expected.sort();
    assert_eq!(streams, expected, "each command appended once");
    app.stop().await;
}
