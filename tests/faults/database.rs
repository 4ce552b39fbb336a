//! Database outages under load: every connection of the service ended by the database
//! (`pg_terminate_backend`), then the database out of reach for a while (the service reaches
//! it through a proxy that is cut). The service answers `UNAVAILABLE` meanwhile, `/ready`
//! goes red and green again, and workers, projectors and subscriptions resume by themselves.

use std::time::{Duration, Instant};

use chronicle::provider::Faults;
use serde_json::json;

use crate::support::checks::{self, settle};
use crate::support::client::Client;
use crate::support::load::{Load, Mix};
use crate::support::subscriber::Subscriber;
use crate::support::{
    eventually, long, spawn_emulator, Behaviour, Proxy, Receiver, Server, TestDb,
};

/// The service's `application_name`, so the test ends its connections and no others.
const APPLICATION: &str = "chronicle-faults-server";

const SUBMIT: &str = "mutation($input: SubmitRequestInput!) {
    submitRequest(input: $input) { requestId } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cut_off_from_its_database_it_answers_unavailable_and_resumes() {
    let db = TestDb::new().await;
    let (emulator, provider) = spawn_emulator(Faults::default()).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let upstream = format!("{}:{}", db.options.get_host(), db.options.get_port());
    let proxy = Proxy::start(Box::leak(upstream.into_boxed_str())).await;
    let through_proxy = format!(
        "postgres://postgres@127.0.0.1:{}/{}?application_name={APPLICATION}",
        proxy.port,
        db.options.get_database().expect("database name")
    );
    let settings = [
        ("DATABASE_URL", through_proxy),
        ("CHRONICLE_PROVIDER_URL", provider),
        // Longer than the pool's 10 s acquire timeout: an outage shows as UNAVAILABLE.
        ("CHRONICLE_REQUEST_TIMEOUT_SECS", "30".to_owned()),
    ];
    let mut server = Server::start(&db, &settings).await;
    let head = checks::log_head(&db.pool).await;
    let subscriber = Subscriber::start(
        &server.ws_url(),
        &format!(
            "subscription {{ events(after: \"{head}\") {{ aggregateType aggregateId sequence }} }}"
        ),
    )
    .await;
    let client = Client::new(server.url());
    let load = Load::start(
        &client,
        &Mix {
            clients: 8,
            deliveries: vec![json!({ "webhookUrl": receiver.url })],
            simulations: true,
            pause: Duration::ZERO,
        },
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The database ends every connection of the service at once.
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(APPLICATION)
    .fetch_all(&db.pool)
    .await
    .expect("terminate");
    assert!(!ended.is_empty(), "the service had no connection to end");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_outage = load.count();

    // Then it is out of reach.
    proxy.cut();
    let outage = Instant::now();
    let probe = json!({ "input": {
        "customId": "during-outage", "endpoint": "/v1/chat/completions", "model": "m",
        "delivery": { "poll": true }, "body": { "messages": [] } } });
    let sent = Instant::now();
    let answer = client.send_once(SUBMIT, "submitRequest", &probe).await;
    let answered_in = sent.elapsed();
    assert_eq!(
        answer,
        Err("UNAVAILABLE".to_owned()),
        "a command while the database is gone"
    );
    assert!(
        answered_in < Duration::from_secs(20),
        "answered after {answered_in:?}"
    );
    eventually(Duration::from_secs(20), "/ready to go red", || async {
        (server.ready_status().await == Some(503)).then_some(())
    })
    .await;
    let down_for = if long() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(8)
    };
    tokio::time::sleep(down_for.saturating_sub(outage.elapsed())).await;
    assert!(server.pid().is_some(), "the service is still running");
    let during_outage = load.count() - before_outage;

    proxy.restore();
    eventually(Duration::from_secs(30), "/ready to go green", || async {
        server.ready().await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let journal = load.stop().await;
    let unavailable = journal
        .iter()
        .filter(|r| r.resent_for.iter().any(|reason| reason == "UNAVAILABLE"))
        .count();
    eprintln!(
        "{} commands; {during_outage} answered during the outage; {unavailable} were told \
         UNAVAILABLE and sent again; the probe was answered in {answered_in:?}",
        journal.len()
    );
    assert!(unavailable > 0, "no command was told UNAVAILABLE");

    settle(&server, &db.pool, Duration::from_secs(180)).await;
    let expected = checks::events_after(&db.pool, head).await;
    let received = subscriber
        .finish(expected.len(), Duration::from_secs(60))
        .await;
    checks::subscription_saw(&received, &expected);
    server.stop().await;
    checks::guarantees_hold(&db, &journal, &emulator, &receiver.received()).await;
}
