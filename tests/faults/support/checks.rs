//! What must hold after a fault: acknowledged commands kept, nothing applied twice, read
//! models equal to a rebuild from zero, provider batches created once, deliveries made at
//! least once under one delivery id, and an intact hash chain.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Output;
use std::time::Duration;

use chronicle::provider::{Emulator, BATCH_METADATA_KEY};
use chronicle_projections::LogCursor;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use sqlx::PgPool;

use super::client::Answer;
use super::load::{Kind, Record};
use super::{eventually, Received, Server, TestDb};

/// The RabbitMQ broker the tests use.
const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Request statuses that still have work ahead.
const UNSETTLED_REQUESTS: [&str; 4] = [
    "pending",
    "provider_processing",
    "provider_processed",
    "delivering",
];

/// Batch statuses that are final.
const FINAL_BATCHES: [&str; 4] = ["done", "failed", "cancelled", "expired"];

/// Waits (up to `deadline`) until every batch, request and simulation has come to rest and
/// then every projection has caught up (in that order: work coming to rest appends its last
/// events).
pub async fn settle(server: &Server, pool: &PgPool, deadline: Duration) {
    eventually(
        deadline,
        "batches, requests and simulations to settle",
        || async {
            let busy: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM requests WHERE status = ANY($1))
                  + (SELECT count(*) FROM batches WHERE NOT status = ANY($2))
                  + (SELECT count(*) FROM simulations WHERE pending_call_id IS NOT NULL)",
            )
            .bind(UNSETTLED_REQUESTS.as_slice())
            .bind(FINAL_BATCHES.as_slice())
            .fetch_one(pool)
            .await
            .expect("count unsettled work");
            (busy == 0).then_some(())
        },
    )
    .await;
    server.caught_up().await;
}

/// The guarantees every fault test checks once the server has stopped: acknowledged
/// commands kept and applied once, each batch at the provider once, webhook results delivered
/// at least once, and projections equal to a rebuild.
pub async fn guarantees_hold(
    db: &TestDb,
    journal: &[Record],
    emulator: &Emulator,
    webhook_calls: &[Received],
) {
    acknowledged_commands_have_their_events(&db.pool, journal).await;
    nothing_applied_twice(&db.pool, journal).await;
    provider_holds_each_batch_once(&db.pool, emulator).await;
    delivered_at_least_once(&db.pool, "webhook", &webhook_copies(webhook_calls)).await;
    projections_equal_a_rebuild(db).await;
}

/// Every command was answered, none with an internal error, and each acknowledged one left
/// its events and its effect: the outcome's event at its version, a submission's request with
/// its custom id, a cancelled request, a flushed batch, an ended simulation.
pub async fn acknowledged_commands_have_their_events(pool: &PgPool, journal: &[Record]) {
    let mut applied = 0;
    for record in journal {
        let answer = record
            .answer
            .as_ref()
            .unwrap_or_else(|| panic!("never answered: {:?}", record.kind));
        let data = match answer {
            Answer::Applied(data) => data,
            Answer::Refused(code) => {
                assert!(
                    !["INTERNAL", "NONE", "TIMEOUT"].contains(&code.as_str()),
                    "{:?} refused with {code}",
                    record.kind
                );
                continue;
            }
        };
        applied += 1;
        if let Kind::Submit { custom_id } = &record.kind {
            let request = data["requestId"].as_str().expect("request id");
            assert!(
                holds(
                    pool,
                    "SELECT EXISTS (SELECT 1 FROM requests WHERE id = $1::uuid AND custom_id = $2)",
                    &[request, custom_id]
                )
                .await,
                "acknowledged submission missing: {custom_id} -> {data}"
            );
            continue;
        }
        let aggregate_type = data["aggregateType"].as_str().expect("aggregate type");
        let aggregate_id = data["aggregateId"].as_str().expect("aggregate id");
        let version = data["version"].as_i64().expect("version").to_string();
        assert!(
            holds(
                pool,
                "SELECT EXISTS (SELECT 1 FROM events
                                 WHERE aggregate_type = $1 AND aggregate_id = $2
                                   AND sequence = $3::bigint)",
                &[aggregate_type, aggregate_id, &version],
            )
            .await,
            "acknowledged but missing: {:?} -> {data}",
            record.kind
        );
        let effect = match &record.kind {
            Kind::Cancel { request_id } => Some((
                "SELECT EXISTS (SELECT 1 FROM requests WHERE id = $1::uuid AND status = 'cancelled')",
                request_id,
            )),
            Kind::Flush { batch_id } => Some((
                "SELECT EXISTS (SELECT 1 FROM batches WHERE id = $1::uuid AND close_reason = 'flushed')",
                batch_id,
            )),
            Kind::EndSimulation { simulation_id } => Some((
                "SELECT EXISTS (SELECT 1 FROM simulations WHERE id = $1::uuid
                                   AND status IN ('ended', 'feedback_ready', 'archived'))",
                simulation_id,
            )),
            Kind::Submit { .. } | Kind::CreateSimulation | Kind::PostMessage { .. } => None,
        };
        if let Some((sql, id)) = effect {
            assert!(
                holds(pool, sql, &[id]).await,
                "{:?} acknowledged without its effect",
                record.kind
            );
        }
    }
    assert!(applied > 0, "no command was acknowledged at all");
}

/// Whether the boolean query `sql` with text parameters `binds` is true.
async fn holds(pool: &PgPool, sql: &str, binds: &[&str]) -> bool {
    binds
        .iter()
        .fold(sqlx::query_scalar(sql), |query, value| query.bind(*value))
        .fetch_one(pool)
        .await
        .expect("check query")
}

/// Nothing was applied twice: one request per custom id, one learner message per text, and
/// every command id's events in one transaction (a retried command was not run again).
pub async fn nothing_applied_twice(pool: &PgPool, journal: &[Record]) {
    let twice: Vec<String> =
        sqlx::query_scalar("SELECT custom_id FROM requests GROUP BY custom_id HAVING count(*) > 1")
            .fetch_all(pool)
            .await
            .expect("custom ids");
    assert!(twice.is_empty(), "requests submitted twice: {twice:?}");

    let messages: Vec<(String, String)> = sqlx::query_as(
        "SELECT simulation_id::text, text FROM simulation_messages WHERE role = 'learner'",
    )
    .fetch_all(pool)
    .await
    .expect("learner messages");
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for message in messages {
        *seen.entry(message).or_default() += 1;
    }
    let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "messages recorded twice: {repeated:?}");
    for record in journal {
        if let (
            Kind::PostMessage {
                simulation_id,
                text,
            },
            Some(Answer::Applied(_)),
        ) = (&record.kind, &record.answer)
        {
            let key = (simulation_id.clone(), text.clone());
            assert_eq!(
                seen.get(&key),
                Some(&1),
                "acknowledged message missing: {key:?}"
            );
        }
    }

    let rerun: Vec<String> = sqlx::query_scalar(
        "SELECT metadata ->> 'command_id' FROM events
          WHERE metadata ->> 'command_id' IS NOT NULL
          GROUP BY metadata ->> 'command_id', aggregate_type, aggregate_id
         HAVING count(DISTINCT transaction_id) > 1",
    )
    .fetch_all(pool)
    .await
    .expect("command ids");
    assert!(
        rerun.is_empty(),
        "commands applied in two transactions: {rerun:?}"
    );
}

/// Each batch the service sent is at the provider exactly once, and the provider holds no
/// batch the service does not know.
pub async fn provider_holds_each_batch_once(pool: &PgPool, emulator: &Emulator) {
    let mut at_provider: BTreeMap<String, usize> = BTreeMap::new();
    for id in emulator.metadata_values(BATCH_METADATA_KEY) {
        *at_provider
            .entry(id.expect("every batch carries its chronicle id"))
            .or_default() += 1;
    }
    let twice: Vec<_> = at_provider.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "batches created twice at the provider: {twice:?}"
    );
    let sent: HashSet<String> =
        sqlx::query_scalar("SELECT id::text FROM batches WHERE provider_batch_id IS NOT NULL")
            .fetch_all(pool)
            .await
            .expect("sent batches")
            .into_iter()
            .collect();
    let created: HashSet<String> = at_provider.into_keys().collect();
    assert_eq!(sent, created, "batches sent vs batches at the provider");
    assert!(!sent.is_empty(), "no batch reached the provider");
}

/// A copy of a result at its target: the envelope, and whether the target took it.
pub struct Copy {
    pub envelope: Value,
    pub taken: bool,
}

/// The webhook calls as copies; each call's delivery id header matches its body.
fn webhook_copies(calls: &[Received]) -> Vec<Copy> {
    calls
        .iter()
        .map(|call| {
            let envelope = call.json();
            let header = call.header("chronicle-delivery-id");
            assert_eq!(envelope["delivery_id"], header, "header and body agree");
            Copy {
                envelope,
                taken: call.accepted,
            }
        })
        .collect()
}

/// Every message in RabbitMQ queue `queue`, taken off it, as copies.
pub async fn queue_copies(queue: &str) -> Vec<Copy> {
    let connection = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672");
    let channel = connection.create_channel().await.expect("channel");
    let mut copies = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        copies.push(Copy {
            envelope: serde_json::from_slice(&message.delivery.data).expect("envelope"),
            taken: true,
        });
    }
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    copies
}

/// Every request delivered by `kind` (`webhook`, `rabbitmq`) was delivered or cancelled,
/// each delivered one reached its target at least once, and all copies of one request
/// carry one delivery id (retries and repeats after a crash included).
pub async fn delivered_at_least_once(pool: &PgPool, kind: &str, copies: &[Copy]) {
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    let mut taken: HashSet<String> = HashSet::new();
    for copy in copies {
        let request = copy.envelope["request_id"].as_str().expect("request id");
        let delivery = copy.envelope["delivery_id"].as_str().expect("delivery id");
        ids.entry(request.to_owned())
            .or_default()
            .insert(delivery.to_owned());
        if copy.taken {
            taken.insert(request.to_owned());
        }
    }
    let split: Vec<_> = ids.iter().filter(|(_, d)| d.len() > 1).collect();
    assert!(
        split.is_empty(),
        "one round, several delivery ids: {split:?}"
    );
    let statuses: Vec<(String, String)> =
        sqlx::query_as("SELECT id::text, status FROM requests WHERE delivery ->> 'kind' = $1")
            .bind(kind)
            .fetch_all(pool)
            .await
            .expect("requests");
    for (id, status) in &statuses {
        match status.as_str() {
            "delivered" => assert!(taken.contains(id), "{id} delivered, but not at its target"),
            "cancelled" => {}
            other => panic!("{kind} request {id} ended {other}"),
        }
    }
    assert!(
        statuses.iter().any(|(_, s)| s == "delivered"),
        "no {kind} request was delivered"
    );
}

/// With the server stopped: rebuilds every projection from zero with the CLI and checks that
/// every table is as the live projectors left it.
pub async fn projections_equal_a_rebuild(db: &TestDb) {
    let before = tables(&db.pool).await;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM projection_checkpoints ORDER BY name")
            .fetch_all(&db.pool)
            .await
            .expect("projection names");
    assert!(names.len() >= 10, "projections: {names:?}");
    for name in &names {
        let output = chronicle(db, &["projections", "rebuild", name]).await;
        assert!(
            output.status.success(),
            "rebuild {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let after = tables(&db.pool).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (table, rows) in &before {
        let rebuilt = &after[table];
        if rows != rebuilt {
            let missing: Vec<_> = rows
                .iter()
                .filter(|r| !rebuilt.contains(r))
                .take(3)
                .collect();
            let extra: Vec<_> = rebuilt
                .iter()
                .filter(|r| !rows.contains(r))
                .take(3)
                .collect();
            panic!(
                "{table} differs after a rebuild: live only {missing:?}, rebuilt only {extra:?}"
            );
        }
    }
}

/// `chronicle audit verify` finds every hash chain intact.
pub async fn log_is_intact(db: &TestDb) {
    let output = chronicle(db, &["audit", "verify"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("intact"),
        "{stdout}"
    );
}

/// Every table's rows as text, sorted, by table name (the migrations' bookkeeping aside).
async fn tables(pool: &PgPool) -> BTreeMap<String, Vec<String>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
          WHERE table_schema IN ('public', 'analytics') AND table_type = 'BASE TABLE'
            AND table_name NOT IN ('_sqlx_migrations', 'projection_checkpoints')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut all = BTreeMap::new();
    for name in names {
        // A count of zero is no count (readers ask for `n > 0`): appends leave zero rows for
        // the states a request passed through, a rebuild applying a page's states at once
        // never makes them.
        let meaningful = if name == "public.batch_request_counts" {
            " WHERE t.n <> 0"
        } else {
            ""
        };
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT t::text FROM {name} t{meaningful} ORDER BY 1"
        ))
        .fetch_all(pool)
        .await
        .expect("table rows");
        all.insert(name, rows);
    }
    all
}

/// Runs `chronicle <arguments>` on `db`, as an operator would.
async fn chronicle(db: &TestDb, arguments: &[&str]) -> Output {
    tokio::process::Command::new(super::server::binary())
        .args(arguments)
        .env("DATABASE_URL", db.url())
        .env("CHRONICLE_KEY_PEPPER", super::server::PEPPER)
        .env("RUST_LOG", "error")
        .output()
        .await
        .expect("run chronicle")
}

/// An event as the `events` subscription shows it: type, id, sequence.
type EventKey = (String, String, i64);

/// The cursor of the log's last event.
pub async fn log_head(pool: &PgPool) -> LogCursor {
    let position = sqlx::query_scalar("SELECT max(log_position) FROM events")
        .fetch_one(pool)
        .await
        .expect("log head");
    LogCursor::at(position)
}

/// Events after `cursor` in log order, as SQL to wrap: `$1` takes the cursor.
pub const EVENTS_AFTER: &str = "SELECT * FROM events
    WHERE log_position > $1 ORDER BY log_position";

/// Every event after `cursor` (taken from [`log_head`]), in log order.
pub async fn events_after(pool: &PgPool, cursor: LogCursor) -> Vec<EventKey> {
    sqlx::query_as(&format!(
        "SELECT aggregate_type, aggregate_id, sequence FROM ({EVENTS_AFTER}) after"
    ))
    .bind(cursor.position)
    .fetch_all(pool)
    .await
    .expect("events after the cursor")
}

/// The `events` subscription's messages are exactly `expected`, in order: none missed, none
/// repeated.
pub fn subscription_saw(received: &[Value], expected: &[EventKey]) {
    let got: Vec<EventKey> = received
        .iter()
        .map(|data| {
            let event = &data["events"];
            (
                event["aggregateType"].as_str().expect("type").to_owned(),
                event["aggregateId"].as_str().expect("id").to_owned(),
                event["sequence"].as_i64().expect("sequence"),
            )
        })
        .collect();
    assert_eq!(got.len(), expected.len(), "events received vs in the log");
    if let Some(at) = got.iter().zip(expected).position(|(g, e)| g != e) {
        panic!(
            "the subscription diverged from the log at {at}: {:?} vs {:?}",
            got[at], expected[at]
        );
    }
}
