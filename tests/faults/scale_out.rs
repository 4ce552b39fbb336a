//! Scale out: three instances on one database share the work by partitions; requests
//! submitted through all of them, one instance killed with SIGKILL midway, and every request
//! processed and delivered, under one delivery id each, by the two left.

use std::time::Duration;

use chronicle::provider::Faults;
use serde_json::{json, Value};

use crate::support::checks::{self, settle};
use crate::support::client::Client;
use crate::support::load::{Load, Mix};
use crate::support::{eventually, long, spawn_emulator, Behaviour, Receiver, Server, TestDb};

/// Partitions of each partitioned role.
const PARTITIONS: usize = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_the_work_and_lose_nothing_when_one_dies() {
    let db = TestDb::new().await;
    let (emulator, provider) = spawn_emulator(Faults::default()).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    // Three instances at the default budget (30 connections each) and a fault test running
    // beside this one would pass PostgreSQL's 100: the README's rule for N instances.
    let settings = [
        ("CHRONICLE_PROVIDER_URL", provider),
        ("CHRONICLE_DB_MAX_CONNECTIONS", "10".to_owned()),
    ];
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(Server::start(&db, &settings).await);
    }
    shared_by(&servers[0], 3, Duration::from_secs(30)).await;

    let client = Client::spread(servers.iter().map(Server::url).collect());
    let load = Load::start(
        &client,
        &Mix {
            clients: 12,
            deliveries: vec![json!({ "webhookUrl": receiver.url })],
            simulations: true,
            pause: Duration::ZERO,
        },
    );
    let commands = if long() { 12_000 } else { 3_600 };
    answered(&load, commands / 2).await;
    servers[1].kill().await;
    eprintln!("killed one of three after {} commands", load.count());
    // The two left take over the dead one's partitions within a few seconds.
    shared_by(&servers[0], 2, Duration::from_secs(10)).await;
    answered(&load, commands).await;
    let journal = load.stop().await;
    let submitted = journal
        .iter()
        .filter(|r| matches!(r.kind, crate::support::load::Kind::Submit { .. }))
        .count();
    eprintln!(
        "{} commands answered, {submitted} submissions",
        journal.len()
    );

    settle(&servers[0], &db.pool, Duration::from_secs(240)).await;
    servers[0].stop().await;
    servers[2].stop().await;
    checks::guarantees_hold(&db, &journal, &emulator, &receiver.received()).await;
    checks::log_is_intact(&db).await;
}

/// Waits until `instances` live instances share every partitioned role's partitions, each
/// holding its fair part, as `server`'s admin query shows them.
async fn shared_by(server: &Server, instances: usize, within: Duration) {
    let fair = PARTITIONS.div_ceil(instances);
    eventually(within, "the partitions to be shared", || async {
        let answer = server
            .try_graphql(
                "{ instances { name partitions { role partitions } } }",
                json!({}),
            )
            .await
            .ok()?;
        let live = answer["data"]["instances"].as_array()?.clone();
        (live.len() == instances && every_role_shared(&live, fair)).then_some(())
    })
    .await;
}

/// Every partitioned role's partitions are all held, none by two instances, none
/// instance holding more than `fair`.
fn every_role_shared(live: &[Value], fair: usize) -> bool {
    let mut held: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for instance in live {
        for role in instance["partitions"].as_array().into_iter().flatten() {
            let parts: Vec<i64> = role["partitions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_i64)
                .collect();
            if parts.len() > fair {
                return false;
            }
            let name = role["role"].as_str().unwrap_or_default().to_owned();
            held.entry(name).or_default().extend(parts);
        }
    }
    !held.is_empty()
        && held.values_mut().all(|parts| {
            parts.sort_unstable();
            *parts == (0..PARTITIONS as i64).collect::<Vec<_>>()
        })
}

/// Waits until the load has `count` commands answered.
async fn answered(load: &Load, count: usize) {
    eventually(
        Duration::from_secs(300),
        "commands to be answered",
        || async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            (load.count() >= count).then_some(())
        },
    )
    .await;
}
