//! Rebuilds beside the live tables (blue/green): the live read model keeps answering in
//! full while copies are loaded, the swap is atomic, a failed rebuild changes nothing live,
//! two runners never load the same copies, and a projector whose version changed is
//! rebuilt by itself.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chronicle::projection::RebuildError;
use chronicle_projections::aggregate_index::AggregateIndex;
use chronicle_projections::{rebuilds, ProjectionError, Projector, RecordedEvent};
use serde_json::{json, Value};
use sqlx::{PgConnection, PgPool};

use crate::projections::{rebuild_here, rebuilder};
use crate::support::{eventually, LedgerCommand, TestApp, TestDb};

const STATUS: &str = "{ projections { name state version rebuildProgress
    rebuild { phase eventsApplied requestedBy error } } }";

async fn submit_many(app: &TestApp, prefix: &str, count: usize) {
    let requests: Vec<Value> = (0..count)
        .map(|n| {
            json!({ "customId": format!("{prefix}-{n}"), "endpoint": "/v1/chat/completions",
                    "model": "gpt-4o-mini", "delivery": { "poll": true },
                    "body": { "messages": [{ "role": "user", "content": "hi" }] } })
        })
        .collect();
    let response = app
        .graphql(
            "mutation($r: [SubmitRequestInput!]!) { submitRequests(requests: $r) { requestId } }",
            json!({ "r": requests }),
        )
        .await;
    assert!(response["errors"].is_null(), "submitted: {response}");
}

/// How many requests the API lists (up to 1,000).
async fn listed(app: &TestApp) -> i64 {
    let response = app
        .graphql("{ requests(first: 1000) { nodes { id } } }", json!({}))
        .await;
    let nodes = response["data"]["requests"]["nodes"].as_array();
    nodes.map_or(-1, |nodes| i64::try_from(nodes.len()).unwrap_or(-1))
}

async fn projection(app: &TestApp, name: &str) -> Value {
    let response = app.graphql(STATUS, json!({})).await;
    response["data"]["projections"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no projection {name}: {response}"))
}

/// Every row of the requests read model and the counts derived from it, as text.
async fn requests_model(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT * FROM (
            SELECT 'request ' || r::text AS row FROM requests r
             UNION ALL
            SELECT 'count ' || c::text FROM batch_request_counts c WHERE c.n <> 0) rows
          ORDER BY row",
    )
    .fetch_all(pool)
    .await
    .expect("requests read model")
}

async fn copies_left(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'chronicle\\_%'")
        .fetch_one(pool)
        .await
        .expect("schemas")
}

async fn end_reader(mut reader: PgConnection) {
    sqlx::raw_sql("COMMIT")
        .execute(&mut reader)
        .await
        .expect("reader ends");
}

/// Polls the list until `stop`, keeping the fewest items it ever saw.
fn poll_list(app: Arc<TestApp>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<i64> {
    tokio::spawn(async move {
        let mut fewest = i64::MAX;
        while !stop.load(Ordering::Relaxed) {
            fewest = fewest.min(listed(&app).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fewest
    })
}

/// Submits one request at a time until `stop` (at most 400: the list shows 1,000), counting
/// them.
fn keep_writing(
    app: Arc<TestApp>,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicI64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) && written.load(Ordering::Relaxed) < 400 {
            let n = written.load(Ordering::Relaxed);
            submit_many(&app, &format!("live-{n}"), 1).await;
            written.fetch_add(1, Ordering::Relaxed);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_live_writes_the_list_never_shrinks_and_the_swap_equals_a_rebuild_from_zero() {
    let db = TestDb::new().await;
    let app = Arc::new(TestApp::spawn(&db, "blue-green").await);
    submit_many(&app, "seed", 300).await;
    let before = listed(&app).await;
    assert_eq!(before, 300);
    let reader = db.hold_requests_open().await;
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicI64::new(0));
    let poller = poll_list(app.clone(), stop.clone());
    let writer = keep_writing(app.clone(), stop.clone(), written.clone());

    let asked = app
        .graphql(
            "mutation { rebuildProjection(name: \"requests\") { state } }",
            json!({}),
        )
        .await;
    assert_eq!(
        asked["data"]["rebuildProjection"]["state"], "REBUILDING",
        "{asked}"
    );
    let finishing = eventually(Duration::from_secs(30), "the copies loaded", || async {
        let found = projection(&app, "requests").await;
        (found["rebuild"]["phase"] == "FINISHING").then_some(found)
    })
    .await;
    assert_eq!(finishing["state"], "REBUILDING");
    assert!(
        finishing["rebuild"]["eventsApplied"].as_i64() >= Some(300),
        "{finishing}"
    );
    // Swaps are tried and give up on the reader's lock while writes go on.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(projection(&app, "requests").await["state"], "REBUILDING");
    end_reader(reader).await;
    eventually(Duration::from_secs(30), "the copies swapped in", || async {
        let found = projection(&app, "requests").await;
        (found["state"] == "LIVE" && found["rebuild"].is_null()).then_some(())
    })
    .await;
    // Writes across the swap.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let fewest = poller.await.expect("poller");
    let written = written.load(Ordering::Relaxed);
    assert!(written > 0, "writes went on during the rebuild");
    assert!(
        fewest >= before,
        "the list showed {fewest} items, fewer than {before}"
    );
    assert_eq!(
        listed(&app).await,
        before + written,
        "every acknowledged write is listed"
    );

    let swapped = requests_model(&db.pool).await;
    rebuild_here(&db, "requests").await;
    assert_eq!(
        requests_model(&db.pool).await,
        swapped,
        "the swapped-in model equals a rebuild from zero"
    );
    assert_eq!(copies_left(&db.pool).await, 0);
}

#[tokio::test]
async fn a_failed_rebuild_leaves_the_live_tables_and_is_shown_until_asked_again() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "failing").await;
    submit_many(&app, "seed", 5).await;
    let live = requests_model(&db.pool).await;
    // A cause the copies meet (triggers are copied with the tables): no row may be
    // inserted any more.
    sqlx::raw_sql(
        "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused %', NEW.custom_id; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON requests
            FOR EACH ROW EXECUTE FUNCTION test_refuse();",
    )
    .execute(&db.pool)
    .await
    .expect("refuse");

    app.graphql(
        "mutation { rebuildProjection(name: \"requests\") { state } }",
        json!({}),
    )
    .await;
    let failed = eventually(Duration::from_secs(30), "the rebuild failed", || async {
        let found = projection(&app, "requests").await;
        (found["rebuild"]["phase"] == "FAILED").then_some(found)
    })
    .await;
    assert_eq!(failed["state"], "LIVE", "{failed}");
    let error = failed["rebuild"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("refused"), "{failed}");
    assert_eq!(
        requests_model(&db.pool).await,
        live,
        "the live tables are unchanged"
    );
    assert_eq!(
        copies_left(&db.pool).await,
        0,
        "the failed copies are dropped"
    );
    assert_eq!(listed(&app).await, 5);

    sqlx::raw_sql("DROP TRIGGER refuse ON requests")
        .execute(&db.pool)
        .await
        .expect("cure");
    let again = app
        .graphql(
            "mutation { rebuildProjection(name: \"requests\") { rebuild { phase error } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        again["data"]["rebuildProjection"]["rebuild"]["phase"], "BUILDING",
        "{again}"
    );
    eventually(
        Duration::from_secs(30),
        "the rebuild swapped in",
        || async {
            projection(&app, "requests").await["rebuild"]
                .is_null()
                .then_some(())
        },
    )
    .await;
    assert_eq!(requests_model(&db.pool).await, live);
    app.stop().await;
}

#[tokio::test]
async fn two_runners_never_load_the_same_copies() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "racing").await;
    for id in ["a", "b", "c"] {
        app.ledger(id, LedgerCommand::Open).await.expect("open");
        app.ledger(id, LedgerCommand::Deposit(vec![1; 5]))
            .await
            .expect("deposit");
        app.projected(id, 6).await;
    }
    app.stop().await;
    let rows = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>("SELECT t::text FROM aggregate_index t ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("rows")
    };
    let before = rows(db.pool.clone()).await;
    let projectors = vec![Arc::new(AggregateIndex) as Arc<dyn Projector>];
    rebuilds::request(&db.pool, "aggregate_index", 1, "test")
        .await
        .expect("request");
    let (first, second) = (
        rebuilder(&db, projectors.clone()),
        rebuilder(&db, projectors),
    );
    let (one, other) = tokio::join!(
        first.rebuild("aggregate_index", &|_| {}),
        second.rebuild("aggregate_index", &|_| {})
    );
    let outcomes = [one, other];
    let swapped = outcomes.iter().filter(|o| o.is_ok()).count();
    let stopped = outcomes
        .iter()
        .filter(|o| matches!(o, Err(RebuildError::Superseded(_))))
        .count();
    assert_eq!((swapped, stopped), (1, 1), "{outcomes:?}");
    assert_eq!(rows(db.pool.clone()).await, before);
}

/// The aggregate index at version 2, as after a change to its code.
struct Bumped;

#[async_trait]
impl Projector for Bumped {
    fn name(&self) -> &'static str {
        AggregateIndex.name()
    }

    fn version(&self) -> i32 {
        2
    }

    fn tables(&self) -> &'static [&'static str] {
        AggregateIndex.tables()
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        AggregateIndex.apply(conn, events).await
    }
}

#[tokio::test]
async fn a_projector_whose_version_changed_is_rebuilt_and_keeps_its_new_version() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "versions").await;
    app.ledger("a", LedgerCommand::Open).await.expect("open");
    app.ledger("a", LedgerCommand::Deposit(vec![1; 3]))
        .await
        .expect("deposit");
    app.projected("a", 4).await;
    app.stop().await;
    let rebuilder = rebuilder(&db, vec![Arc::new(Bumped)]);

    assert_eq!(
        rebuilder.request_changed().await.expect("asked"),
        ["aggregate_index"]
    );
    let rebuild = rebuilds::load(&db.pool, "aggregate_index")
        .await
        .expect("load");
    let rebuild = rebuild.expect("asked for");
    assert_eq!(
        (rebuild.version, rebuild.requested_by.as_str()),
        (2, "start-up")
    );
    rebuilder
        .rebuild("aggregate_index", &|_| {})
        .await
        .expect("rebuilt");
    let version: i32 = sqlx::query_scalar(
        "SELECT version FROM projection_checkpoints WHERE name = 'aggregate_index'",
    )
    .fetch_one(&db.pool)
    .await
    .expect("version");
    assert_eq!(version, 2);
    assert!(rebuilder.request_changed().await.expect("asked").is_empty());
}

#[tokio::test]
async fn views_and_grants_over_a_rebuilt_table_survive_the_swap() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "views").await;
    app.stop().await;
    // A grant of an operator's own, beyond the analytics role's default privileges.
    sqlx::raw_sql(
        "GRANT SELECT ON analytics.batch_turnaround, analytics.batch_turnaround_daily
            TO pg_monitor",
    )
    .execute(&db.pool)
    .await
    .expect("grant");
    let definition = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT pg_get_viewdef('analytics.batch_turnaround_daily'::regclass)",
        )
        .fetch_one(&db.pool)
        .await
        .expect("view")
    };
    let before = definition().await;
    rebuild_here(&db, "analytics_batches").await;
    assert_eq!(definition().await, before);
    let granted: Vec<bool> = sqlx::query_scalar(
        "SELECT has_table_privilege(r, t, 'SELECT')
           FROM unnest(ARRAY['chronicle_analytics', 'pg_monitor']) r,
                unnest(ARRAY['analytics.batch_turnaround',
                             'analytics.batch_turnaround_daily']) t",
    )
    .fetch_all(&db.pool)
    .await
    .expect("privileges");
    assert_eq!(granted, [true; 4]);
}

#[tokio::test]
async fn a_rebuild_goes_past_an_event_an_analytics_projector_keeps_failing_on() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "go-on").await;
    submit_many(&app, "fine", 3).await;
    // Every copy of the table refuses one model's rows (triggers are copied).
    sqlx::raw_sql(
        "CREATE FUNCTION test_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.request_id IN (SELECT id FROM requests WHERE custom_id = 'fine-1') THEN
                 RAISE EXCEPTION 'poisoned';
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER poison BEFORE INSERT ON analytics.request_keys
            FOR EACH ROW EXECUTE FUNCTION test_poison();",
    )
    .execute(&db.pool)
    .await
    .expect("poison");
    app.stop().await;

    rebuild_here(&db, "analytics_requests").await;
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM analytics.request_keys")
        .fetch_one(&db.pool)
        .await
        .expect("keys");
    assert_eq!(keys, 2, "the other requests are applied");
    let parked: Vec<(bool, String)> = sqlx::query_as(
        "SELECT halted, error FROM parked_events WHERE projection = 'analytics_requests'",
    )
    .fetch_all(&db.pool)
    .await
    .expect("parked");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(
        !parked[0].0 && parked[0].1.contains("poisoned"),
        "{parked:?}"
    );
}

#[tokio::test]
async fn a_migration_during_a_rebuild_is_kept_the_rebuild_starts_again() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "reshaped").await;
    submit_many(&app, "seed", 5).await;
    app.stop().await;
    let live = requests_model(&db.pool).await;
    let reader = db.hold_requests_open().await;
    rebuilds::request(&db.pool, "requests", 1, "test")
        .await
        .expect("asked for");
    let rebuilder = rebuilder(&db, chronicle::startup::Wiring::standard().projectors);
    let running = tokio::spawn(async move { rebuilder.rebuild("requests", &|_| {}).await });
    eventually(Duration::from_secs(30), "the copies loaded", || async {
        let rebuild = rebuilds::load(&db.pool, "requests").await.expect("load");
        rebuild
            .filter(|r| r.phase == rebuilds::Phase::Finishing)
            .map(|_| ())
    })
    .await;
    // A migration meanwhile: the swap would drop its index with the old table.
    sqlx::query("CREATE INDEX requests_by_custom_id ON requests (custom_id)")
        .execute(&db.pool)
        .await
        .expect("migration");
    end_reader(reader).await;

    running.await.expect("task").expect("rebuilt");
    let kept: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_indexes
                         WHERE schemaname = 'public' AND indexname = 'requests_by_custom_id')",
    )
    .fetch_one(&db.pool)
    .await
    .expect("indexes");
    assert!(kept, "the migration's index survives the swap");
    assert_eq!(requests_model(&db.pool).await, live);
    assert!(rebuilds::load(&db.pool, "requests")
        .await
        .expect("load")
        .is_none());
}

#[tokio::test]
async fn an_admin_calls_off_a_rebuild_and_the_live_tables_stay() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "cancelled").await;
    submit_many(&app, "seed", 5).await;
    let live = requests_model(&db.pool).await;
    let reader = db.hold_requests_open().await;
    let cancel = "mutation { cancelRebuild(name: \"requests\") { state rebuild { phase } } }";
    assert_eq!(
        crate::support::error_code(&app.graphql(cancel, json!({})).await),
        "NOT_FOUND",
        "no rebuild to call off yet"
    );
    app.graphql(
        "mutation { rebuildProjection(name: \"requests\") { state } }",
        json!({}),
    )
    .await;
    eventually(Duration::from_secs(30), "the copies loaded", || async {
        let found = projection(&app, "requests").await;
        (found["rebuild"]["phase"] == "FINISHING").then_some(())
    })
    .await;

    let cancelled = app.graphql(cancel, json!({})).await;
    let projection_now = &cancelled["data"]["cancelRebuild"];
    assert_eq!(projection_now["state"], "LIVE", "{cancelled}");
    assert_eq!(projection_now["rebuild"], json!(null), "{cancelled}");
    end_reader(reader).await;
    // Nothing is swapped in after the reader lets go, and the copies are gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(copies_left(&db.pool).await, 0);
    assert!(projection(&app, "requests").await["rebuild"].is_null());
    assert_eq!(requests_model(&db.pool).await, live);
    submit_many(&app, "after", 1).await;
    assert_eq!(listed(&app).await, 6, "the live tables go on");
    app.stop().await;
}
