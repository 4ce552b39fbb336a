//! Crash under load: `kill -9` of the server at random moments while 16 clients send mixed
//! commands, a restart each time, and then every guarantee checked.

use std::time::Duration;

use chronicle::provider::Faults;
use rand::Rng;
use serde_json::json;

use crate::support::checks::{self, settle};
use crate::support::client::Client;
use crate::support::load::{Load, Mix};
use crate::support::{long, spawn_emulator, Behaviour, Receiver, Server, TestDb};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_under_load_it_loses_nothing_and_converges() {
    let db = TestDb::new().await;
    let (emulator, provider) = spawn_emulator(Faults::default()).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let settings = [("CHRONICLE_PROVIDER_URL", provider)];
    let mut server = Server::start(&db, &settings).await;
    let client = Client::new(server.url());
    let load = Load::start(
        &client,
        &Mix {
            clients: 16,
            deliveries: vec![json!({ "webhookUrl": receiver.url })],
            simulations: true,
            pause: Duration::ZERO,
        },
    );

    let kills = if long() { 25 } else { 5 };
    let mut random = rand::rng();
    for kill in 1..=kills {
        let running = Duration::from_millis(random.random_range(500..3_000));
        tokio::time::sleep(running).await;
        let before = load.count();
        server.kill().await;
        let down = Duration::from_millis(random.random_range(0..500));
        tokio::time::sleep(down).await;
        server.restart().await;
        eprintln!(
            "kill {kill}/{kills} after {running:?} ({before} commands answered), down {down:?}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let journal = load.stop().await;
    let resent = journal.iter().filter(|r| !r.resent_for.is_empty()).count();
    eprintln!(
        "{} commands answered in all; {resent} of them were sent again after a kill",
        journal.len()
    );
    assert!(resent > 0, "no kill caught a command in flight");

    settle(&server, &db.pool, Duration::from_secs(180)).await;
    server.stop().await;
    checks::guarantees_hold(&db, &journal, &emulator, &receiver.received()).await;
    checks::log_is_intact(&db).await;
}
