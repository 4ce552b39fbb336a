//! Projection runners: one active instance per projector, failover, rebuilds beside the
//! live tables that reproduce them.

use std::sync::Arc;
use std::time::Duration;

use chronicle::log::LogReader;
use chronicle::projection::{RebuildError, Rebuilder};
use chronicle::startup::Wiring;
use chronicle_projections::{rebuilds, Projector};
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::{eventually, LedgerCommand, TestApp, TestDb};

/// The projector these tests rebuild.
const INDEX: &str = "aggregate_index";

/// The application names of the sessions holding the leadership lock of the asynchronous
/// projectors' set (`aggregate_index` among them).
async fn holders(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND ((l.classid::bigint << 32) | l.objid::bigint)
                = hashtextextended('chronicle.projections', 0)",
    )
    .fetch_all(pool)
    .await
    .expect("pg_locks")
}

async fn index_rows(pool: &PgPool) -> Vec<(String, i64, String)> {
    sqlx::query_as(
        "SELECT aggregate_id, version, last_event_type FROM aggregate_index ORDER BY aggregate_id",
    )
    .fetch_all(pool)
    .await
    .expect("aggregate_index")
}

/// A rebuilder of `projectors` over the test's database, as `chronicle projections rebuild`
/// makes one.
pub(crate) fn rebuilder(db: &TestDb, projectors: Vec<Arc<dyn Projector>>) -> Rebuilder {
    let reader = LogReader::new(
        db.pool.clone(),
        Arc::new(Wiring::standard().upcasters),
        crate::support::vault(&db.pool),
    );
    Rebuilder::new(db.pool.clone(), db.options.clone(), &reader, projectors)
}

/// Rebuilds `name` beside its live tables as `chronicle projections rebuild` does: asks for
/// it and runs it here to the swap (or, when a running instance took it, waits for that
/// one's swap); the events the live tables hold after.
pub(crate) async fn rebuild_here(db: &TestDb, name: &str) -> i64 {
    let projectors = Wiring::standard().projectors;
    let version = projectors
        .iter()
        .find(|p| p.name() == name)
        .expect("projector")
        .version();
    rebuilds::request(&db.pool, name, version, "test")
        .await
        .expect("request");
    match rebuilder(db, projectors).rebuild(name, &|_| {}).await {
        Ok(applied) => applied,
        Err(RebuildError::Superseded(_)) => {
            eventually(Duration::from_secs(60), "the instance's swap", || async {
                let left = rebuilds::load(&db.pool, name).await.expect("rebuild");
                left.is_none().then_some(())
            })
            .await;
            sqlx::query_scalar("SELECT events_applied FROM projection_checkpoints WHERE name = $1")
                .bind(name)
                .fetch_one(&db.pool)
                .await
                .expect("checkpoint")
        }
        Err(error) => panic!("rebuilding {name}: {error}"),
    }
}

async fn seed(app: &TestApp) {
    for id in ["a", "b", "c"] {
        app.ledger(id, LedgerCommand::Open).await.expect("open");
    }
    app.ledger("a", LedgerCommand::Deposit(vec![1; 20]))
        .await
        .expect("deposit");
    app.ledger("b", LedgerCommand::Withdraw(0))
        .await
        .expect("withdraw");
    app.projected("a", 21).await;
    app.projected("b", 2).await;
    app.projected("c", 1).await;
}

#[tokio::test]
async fn each_projector_set_runs_on_exactly_one_instance_and_another_takes_over() {
    let db = TestDb::new().await;
    let first = TestApp::spawn(&db, "instance-a").await;
    eventually(Duration::from_secs(10), "instance-a to lead", || async {
        (holders(&db.pool).await == ["instance-a"]).then_some(())
    })
    .await;
    let second = TestApp::spawn(&db, "instance-b").await;
    second.ledger("x", LedgerCommand::Open).await.expect("open");
    second.projected("x", 1).await;
    // The roles held whole are spread over the two: the set stays or is handed on, and
    // after the hand-over settles exactly one instance holds it, again and again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let holder = holders(&db.pool).await;
    assert_eq!(holder.len(), 1, "{holder:?}");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(holders(&db.pool).await, holder);
    }

    let (stopped, left, other) = if holder == ["instance-a"] {
        (first, second, "instance-b")
    } else {
        (second, first, "instance-a")
    };
    stopped.stop().await;
    eventually(
        Duration::from_secs(10),
        "the other instance to take over",
        || async { (holders(&db.pool).await == [other]).then_some(()) },
    )
    .await;
    left.ledger("x", LedgerCommand::Deposit(vec![5]))
        .await
        .expect("deposit");
    left.projected("x", 2).await;
    left.stop().await;
}

#[tokio::test]
async fn a_rebuild_while_serving_swaps_in_copies_that_reproduce_the_read_model() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "serving").await;
    seed(&app).await;
    let before = index_rows(&db.pool).await;
    sqlx::query("UPDATE aggregate_index SET version = 0")
        .execute(&db.pool)
        .await
        .expect("corrupt");

    let asked = app
        .graphql(
            "mutation { rebuildProjection(name: \"aggregate_index\") { state rebuild { phase requestedBy } } }",
            json!({}),
        )
        .await;
    let rebuild = &asked["data"]["rebuildProjection"];
    assert_eq!(rebuild["state"], "REBUILDING", "{asked}");
    assert_eq!(rebuild["rebuild"]["phase"], "BUILDING", "{asked}");
    eventually(
        Duration::from_secs(20),
        "the rebuilt read model swapped in",
        || async { (index_rows(&db.pool).await == before).then_some(()) },
    )
    .await;
    let after = app
        .graphql(
            "{ projections { name state rebuild { phase } } }",
            json!({}),
        )
        .await;
    assert_eq!(after["data"]["projections"][0]["state"], "LIVE", "{after}");
    assert_eq!(after["data"]["projections"][0]["rebuild"], json!(null));
    app.stop().await;
}

#[tokio::test]
async fn an_offline_rebuild_applies_the_whole_log_and_reproduces_the_read_model() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "offline").await;
    seed(&app).await;
    app.stop().await;
    let before = index_rows(&db.pool).await;
    sqlx::query("DELETE FROM aggregate_index WHERE aggregate_id = 'a'")
        .execute(&db.pool)
        .await
        .expect("corrupt");

    // The seed's 24 events and the bootstrap admin's 2 (client created, key issued).
    assert_eq!(rebuild_here(&db, INDEX).await, 26);
    assert_eq!(index_rows(&db.pool).await, before);
    let status =
        chronicle_projections::checkpoint::status(&db.pool, &Wiring::standard().projectors)
            .await
            .expect("status");
    let progress: Vec<_> = status
        .iter()
        .filter(|s| s.name == "aggregate_index")
        .map(|s| {
            (
                s.name.as_str(),
                s.events_applied,
                s.lag,
                s.rebuild.is_none(),
            )
        })
        .collect();
    assert_eq!(progress, [("aggregate_index", 26, 0, true)]);
    let leftovers: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'chronicle\\_%'")
            .fetch_one(&db.pool)
            .await
            .expect("schemas");
    assert_eq!(
        leftovers, 0,
        "the copies' and the old tables' schemas are dropped"
    );
}

#[tokio::test]
async fn projection_status_reports_progress_and_lag_over_graphql() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "status").await;
    seed(&app).await;
    let response = app
        .graphql(
            "{ projections { name eventsApplied lag cursor } }",
            serde_json::json!({}),
        )
        .await;
    let status = &response["data"]["projections"][0];
    assert_eq!(status["name"], "aggregate_index", "{response}");
    assert_eq!(
        status["eventsApplied"], 26,
        "the seed's 24 and the bootstrap's 2"
    );
    assert_eq!(status["lag"], 0);
    app.stop().await;
}

/// Notifications are only wake-up hints: anyone may send them, and forged ones (events that
/// do not exist, resets that did not happen, pages never applied) change nothing.
#[tokio::test]
async fn forged_notifications_change_nothing() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "forged").await;
    seed(&app).await;
    // Every projector at the head, skips recorded: nothing moves on its own any more.
    eventually(
        Duration::from_secs(10),
        "every checkpoint at the head",
        || async {
            let behind: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM projection_checkpoints
                  WHERE log_position < (SELECT max(log_position) FROM events)",
            )
            .fetch_one(&db.pool)
            .await
            .expect("checkpoints");
            (behind == 0).then_some(())
        },
    )
    .await;
    let checkpoints = || async {
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT name, log_position, events_applied FROM projection_checkpoints ORDER BY name",
        )
        .fetch_all(&db.pool)
        .await
        .expect("checkpoints")
    };
    let (rows, positions) = (index_rows(&db.pool).await, checkpoints().await);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    for channel in [
        "chronicle_events",
        "chronicle_resets",
        "chronicle_projected",
    ] {
        for payload in ["", "aggregate_index", "c2.999999", "not a thing"] {
            sqlx::query("SELECT pg_notify($1, $2) FROM generate_series(1, 50)")
                .bind(channel)
                .bind(payload)
                .execute(&db.pool)
                .await
                .expect("notify");
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(index_rows(&db.pool).await, rows);
    assert_eq!(checkpoints().await, positions);
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(after, events);
    // The instance still serves and projects.
    app.ledger("d", LedgerCommand::Open).await.expect("open");
    app.projected("d", 1).await;
    app.stop().await;
}

/// A second instance keeps its roles on its one roles connection and its workers read
/// nothing while idle: over 30 idle seconds, sharing the work, it opens no database session.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_instance_opens_no_sessions_while_idle() {
    let db = TestDb::new().await;
    let leader = TestApp::spawn(&db, "idle-leader").await;
    eventually(
        Duration::from_secs(10),
        "the first instance to hold every role and partition",
        || async {
            let roles = leader
                .graphql(
                    "{ roles { role instance partitions { instance } } }",
                    json!({}),
                )
                .await;
            let all = roles["data"]["roles"].as_array()?.clone();
            let held = |r: &Value| {
                r["instance"] == "idle-leader"
                    || r["partitions"].as_array().is_some_and(|parts| {
                        !parts.is_empty() && parts.iter().all(|p| p["instance"] == "idle-leader")
                    })
            };
            (!all.is_empty() && all.iter().all(held)).then_some(())
        },
    )
    .await;
    // With the shipped fallback poll (5 min): test instances look every 200 ms, which is
    // work, not waiting.
    let standby = TestApp::spawn_configured(&db, "idle-standby", |config| {
        config.log_poll_ms = 300_000;
    })
    .await;
    // Start-up settles (the standby's first claims, its pooled connections opened).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let since: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .expect("now");
    // Sampled every 200 ms: a pooled session lives at least its 10 s idle timeout, so none
    // opened in the window goes unseen.
    let mut opened = std::collections::BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < until {
        let sessions: Vec<String> = sqlx::query_scalar(
            "SELECT pid::text || ' ' || backend_start::text || ' ' || coalesce(query, '')
               FROM pg_stat_activity
              WHERE datname = current_database() AND backend_start > $1
                AND application_name = 'idle-standby'",
        )
        .bind(since)
        .fetch_all(&db.pool)
        .await
        .expect("sessions");
        opened.extend(sessions);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        opened.is_empty(),
        "sessions the second instance opened in 30 idle seconds: {opened:?}"
    );
    standby.stop().await;
    leader.stop().await;
}
