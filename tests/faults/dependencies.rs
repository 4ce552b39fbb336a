//! Dependencies down under load: the provider, the webhook receiver and RabbitMQ each out of
//! reach for a while (behind proxies that are cut). Work waits and retries with backoff; when
//! they are back, every batch reaches the provider once and every result is delivered.

use std::time::Duration;

use chronicle::provider::Faults;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::checks::{self, settle};
use crate::support::client::Client;
use crate::support::load::{Load, Mix};
use crate::support::{
    eventually, long, spawn_emulator, Behaviour, Proxy, Receiver, Server, TestDb,
};

/// A proxy to `address` (`host:port`).
async fn proxy_to(address: &str) -> Proxy {
    Proxy::start(Box::leak(address.to_owned().into_boxed_str())).await
}

/// How many of the work items `sql` counts are waiting, as evidence an outage held them up.
async fn waiting(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count waiting work")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_receiver_and_broker_down_for_a_while_lose_nothing() {
    let db = TestDb::new().await;
    let (emulator, provider_url) = spawn_emulator(Faults::default()).await;
    let provider = proxy_to(provider_url.trim_start_matches("http://")).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let receiver_address = receiver
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/hook");
    let hook = proxy_to(receiver_address).await;
    let broker = proxy_to("127.0.0.1:5672").await;
    let queue = format!("chronicle-faults-{}", Uuid::new_v4());
    let settings = [
        (
            "CHRONICLE_PROVIDER_URL",
            format!("http://127.0.0.1:{}", provider.port),
        ),
        (
            "CHRONICLE_RABBITMQ_URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port),
        ),
        // Backoff from 50 ms to 1 s: 100 attempts outlast every outage here.
        ("CHRONICLE_DELIVERY_MAX_ATTEMPTS", "100".to_owned()),
    ];
    let mut server = Server::start(&db, &settings).await;
    let load = Load::start(
        &Client::new(server.url()),
        &Mix {
            clients: 8,
            deliveries: vec![
                json!({ "webhookUrl": format!("http://127.0.0.1:{}/hook", hook.port) }),
                json!({ "rabbitmqQueue": queue }),
            ],
            simulations: false,
            // A steady trickle: the backlog an outage leaves grows with its length, not
            // with how fast this machine answers.
            pause: Duration::from_millis(200),
        },
    );
    let down = if long() {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(6)
    };
    let outages = [
        (
            "provider",
            &provider,
            "SELECT count(*) FROM batches WHERE status IN ('uploading', 'uploaded')",
        ),
        (
            "webhook receiver",
            &hook,
            "SELECT count(*) FROM requests
              WHERE status IN ('provider_processed', 'delivering')
                AND delivery ->> 'kind' = 'webhook'",
        ),
        (
            "RabbitMQ",
            &broker,
            "SELECT count(*) FROM requests
              WHERE status IN ('provider_processed', 'delivering')
                AND delivery ->> 'kind' = 'rabbitmq'",
        ),
    ];
    for (name, proxy, held_up) in outages {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.cut();
        let cut = tokio::time::Instant::now();
        // Work piles up behind the missing dependency (the load keeps adding some).
        let held = eventually(down + Duration::from_secs(30), name, || async {
            let held = waiting(&db.pool, held_up).await;
            (held > 0).then_some(held)
        })
        .await;
        tokio::time::sleep_until(cut + down).await;
        let held = held.max(waiting(&db.pool, held_up).await);
        eprintln!("{name} down for {:?}: {held} waiting for it", cut.elapsed());
        proxy.restore();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let journal = load.stop().await;
    eprintln!("{} commands answered", journal.len());

    settle(&server, &db.pool, down * 20).await;
    server.stop().await;
    let messages = checks::queue_copies(&queue).await;
    checks::delivered_at_least_once(&db.pool, "rabbitmq", &messages).await;
    checks::guarantees_hold(&db, &journal, &emulator, &receiver.received()).await;
}
