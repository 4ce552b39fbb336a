//! 32 clients commanding one batch, and 32 one simulation, at once: each command applies or
//! is refused with a stable code (CONFLICT when another won the race), and the aggregate's
//! rules hold at the end.

use std::collections::HashMap;
use std::time::Duration;

use chronicle::provider::Faults;
use futures::future::join_all;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::checks::{self, settle};
use crate::support::client::{Answer, Client};
use crate::support::load::{simulation_input, Kind, Record};
use crate::support::{spawn_emulator, Behaviour, Receiver, Server, TestDb};

const CLIENTS: usize = 32;

const SUBMIT: &str = "mutation($input: SubmitRequestInput!, $key: String) {
    submitRequest(input: $input, idempotencyKey: $key) { requestId batchId customId } }";

/// Codes a command racing others may be refused with.
const RACE_CODES: [&str; 2] = ["CONFLICT", "INVALID_TRANSITION"];

/// Runs `CLIENTS` clients at once, each sending the commands `plan(client)` gives, in turn;
/// the journal of all of them.
async fn crowd(
    client: &Client,
    plan: impl Fn(usize) -> Vec<(Kind, &'static str, &'static str, Value)>,
) -> Vec<Record> {
    let runs = (0..CLIENTS).map(|index| {
        let (client, commands) = (client.clone(), plan(index));
        async move {
            let mut journal = Vec::new();
            for (number, (kind, query, field, mut variables)) in commands.into_iter().enumerate() {
                variables["key"] = json!(format!("crowd-{index}-{number}"));
                let (answer, resent_for) = client
                    .command(query, field, &variables, Duration::from_secs(60))
                    .await;
                journal.push(Record {
                    kind,
                    answer,
                    resent_for,
                });
            }
            journal
        }
    });
    join_all(runs).await.into_iter().flatten().collect()
}

/// How many commands of each kind applied; panics on a refusal that is not a lost race.
fn tally(journal: &[Record]) -> HashMap<&'static str, usize> {
    let mut applied = HashMap::new();
    for record in journal {
        let name = match record.kind {
            Kind::Submit { .. } => "submit",
            Kind::Cancel { .. } => "cancel",
            Kind::Flush { .. } => "flush",
            Kind::CreateSimulation => "create",
            Kind::PostMessage { .. } => "post",
            Kind::EndSimulation { .. } => "end",
        };
        match record.answer.as_ref().expect("answered") {
            Answer::Applied(_) => *applied.entry(name).or_default() += 1,
            Answer::Refused(code) => assert!(
                RACE_CODES.contains(&code.as_str()),
                "{:?} refused with {code}",
                record.kind
            ),
        }
    }
    applied
}

/// The stream's event types in order; its sequences run 1..=n without a gap.
async fn stream(pool: &PgPool, aggregate_type: &str, id: &str) -> Vec<String> {
    let events: Vec<(i64, String)> = sqlx::query_as(
        "SELECT sequence, event_type FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
    )
    .bind(aggregate_type)
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("stream");
    for (expected, (sequence, _)) in (1..).zip(&events) {
        assert_eq!(
            *sequence, expected,
            "{aggregate_type} {id}: a gap in its sequence"
        );
    }
    events
        .into_iter()
        .map(|(_, event_type)| event_type)
        .collect()
}

/// A flush of batch `batch_id`.
fn flush(batch_id: &str) -> (Kind, &'static str, &'static str, Value) {
    (
        Kind::Flush {
            batch_id: batch_id.to_owned(),
        },
        "mutation($id: UUID!, $key: String) {
            flushBatch(batchId: $id, idempotencyKey: $key) { aggregateType aggregateId version } }",
        "flushBatch",
        json!({ "id": batch_id }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_on_one_batch_keep_its_rules() {
    let db = TestDb::new().await;
    let (emulator, provider) = spawn_emulator(Faults::default()).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    // Batches close when flushed, never by age: the race is the clients' alone.
    let settings = [
        ("CHRONICLE_PROVIDER_URL", provider),
        ("CHRONICLE_BATCH_MAX_WAIT_MS", "600000".to_owned()),
    ];
    let mut server = Server::start(&db, &settings).await;
    let client = Client::new(server.url());
    let submit = |custom_id: String| {
        let input = json!({ "customId": custom_id, "endpoint": "/v1/chat/completions",
            "model": "contended", "delivery": { "webhookUrl": receiver.url },
            "body": { "messages": [{ "role": "user", "content": "hello" }] } });
        (
            Kind::Submit { custom_id },
            SUBMIT,
            "submitRequest",
            json!({ "input": input }),
        )
    };
    let (_, query, field, variables) = submit("seed".into());
    let seeded = client
        .command(query, field, &variables, Duration::from_secs(10))
        .await;
    let Some(Answer::Applied(seed)) = seeded.0 else {
        panic!("seed: {seeded:?}");
    };
    let batch_id = seed["batchId"].as_str().expect("batch id").to_owned();
    let seed_request = seed["requestId"].as_str().expect("request id").to_owned();

    // Every client submits, cancels the seed request, and one in four flushes the batch.
    let journal = crowd(&client, |index| {
        let mut commands = Vec::new();
        let flush = flush(&batch_id);
        let cancel = (
            Kind::Cancel {
                request_id: seed_request.clone(),
            },
            "mutation($id: UUID!, $key: String) {
                cancelRequest(requestId: $id, idempotencyKey: $key) {
                    aggregateType aggregateId version } }",
            "cancelRequest",
            json!({ "id": seed_request }),
        );
        for round in 0..4 {
            commands.push(submit(format!("crowd-{index}-{round}")));
            if round == 1 {
                commands.push(cancel.clone());
            }
            if round == 2 && index % 4 == 0 {
                commands.push(flush.clone());
            }
        }
        commands
    })
    .await;
    let applied = tally(&journal);
    eprintln!("applied: {applied:?}");
    assert_eq!(
        applied.get("flush"),
        Some(&1),
        "exactly one flush of the batch applies"
    );
    assert_eq!(
        applied.get("cancel"),
        Some(&1),
        "the seed request is cancelled once"
    );
    assert_eq!(
        applied.get("submit"),
        Some(&(CLIENTS * 4)),
        "every submission lands somewhere"
    );

    // Submissions after the flush opened a successor; flush it too, so everything settles.
    server.caught_up().await;
    let building: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM batches WHERE status = 'building'")
            .fetch_all(&db.pool)
            .await
            .expect("building batches");
    for id in building {
        let (_, query, field, variables) = flush(&id);
        let flushed = client
            .command(query, field, &variables, Duration::from_secs(10))
            .await;
        assert!(matches!(flushed.0, Some(Answer::Applied(_))), "{flushed:?}");
    }
    settle(&server, &db.pool, Duration::from_secs(120)).await;
    let types = stream(&db.pool, "Batch", &batch_id).await;
    let closed = types
        .iter()
        .position(|t| t == "BatchClosed")
        .expect("closed");
    assert_eq!(types.iter().filter(|t| *t == "BatchClosed").count(), 1);
    assert!(
        types[closed..]
            .iter()
            .all(|t| t != "BatchRequestsAdded" && t != "BatchRequestWithdrawn"),
        "the batch changed its requests after it closed: {types:?}"
    );
    let (count, listed): (i64, i64) = sqlx::query_as(
        "SELECT b.request_count,
                (SELECT count(*) FROM requests r WHERE r.batch_id = b.id)
           FROM batches b WHERE b.id = $1::uuid",
    )
    .bind(&batch_id)
    .fetch_one(&db.pool)
    .await
    .expect("batch counts");
    assert_eq!(
        count, listed,
        "the batch counts its requests, withdrawn ones too"
    );
    let seed_status: String = sqlx::query_scalar("SELECT status FROM requests WHERE id = $1::uuid")
        .bind(&seed_request)
        .fetch_one(&db.pool)
        .await
        .expect("seed request");
    assert_eq!(seed_status, "cancelled");
    server.stop().await;
    checks::guarantees_hold(&db, &journal, &emulator, &receiver.received()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_clients_on_one_simulation_keep_the_conversation_in_turn() {
    let db = TestDb::new().await;
    let (_emulator, provider) = spawn_emulator(Faults::default()).await;
    let mut server = Server::start(&db, &[("CHRONICLE_PROVIDER_URL", provider)]).await;
    let client = Client::new(server.url());
    let created = client
        .command(
            "mutation($input: CreateSimulationInput!) {
                createSimulation(input: $input) { aggregateId } }",
            "createSimulation",
            &json!({ "input": simulation_input("crowded-learner") }),
            Duration::from_secs(10),
        )
        .await;
    let Some(Answer::Applied(simulation)) = created.0 else {
        panic!("create: {created:?}");
    };
    let id = simulation["aggregateId"].as_str().expect("id").to_owned();

    // Every client tries to say something ten times.
    let journal = crowd(&client, |index| {
        (0..10)
            .map(|round| {
                let text = format!("client {index} says {round}");
                (
                    Kind::PostMessage {
                        simulation_id: id.clone(),
                        text: text.clone(),
                    },
                    "mutation($id: UUID!, $text: String!, $key: String) {
                        postMessage(simulationId: $id, text: $text, idempotencyKey: $key) {
                            aggregateType aggregateId version } }",
                    "postMessage",
                    json!({ "id": id, "text": text }),
                )
            })
            .collect()
    })
    .await;
    let applied = tally(&journal);
    eprintln!("applied: {applied:?}");
    let posted = applied.get("post").copied().unwrap_or_default();
    assert!(posted > 0, "no message got through");

    settle(&server, &db.pool, Duration::from_secs(120)).await;
    stream(&db.pool, "Simulation", &id).await;
    let messages: Vec<(i32, String)> = sqlx::query_as(
        "SELECT seq, role FROM simulation_messages WHERE simulation_id = $1::uuid ORDER BY seq",
    )
    .bind(&id)
    .fetch_all(&db.pool)
    .await
    .expect("messages");
    for (expected, (seq, _)) in (1..).zip(&messages) {
        assert_eq!(*seq, expected, "message numbers run without a gap");
    }
    let roles: Vec<&str> = messages.iter().map(|(_, role)| role.as_str()).collect();
    assert_eq!(roles.first(), Some(&"patient"), "the patient opens");
    for pair in roles.windows(2) {
        assert_ne!(pair[0], pair[1], "the conversation takes turns: {roles:?}");
    }
    let learner = roles.iter().filter(|r| **r == "learner").count();
    assert_eq!(
        learner, posted,
        "every accepted message, and only those, is in the conversation"
    );
    server.stop().await;
    checks::acknowledged_commands_have_their_events(&db.pool, &journal).await;
    checks::nothing_applied_twice(&db.pool, &journal).await;
    checks::projections_equal_a_rebuild(&db).await;
}
