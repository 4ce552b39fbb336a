//! RabbitMQ delivery against the real broker at 127.0.0.1:5672: messages land as the envelope
//! documents, confirmed and persistent, and a broker that goes away loses nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::delivery::{app_with_provider, attempts_recorded, batch_when, submit};
use crate::support::{eventually, Proxy, TestDb};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn channel() -> (Connection, Channel) {
    let connection = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest) must be running");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// A fresh queue name, deleted when the test ends well.
fn queue_name() -> String {
    format!("chronicle-test-{}", Uuid::new_v4())
}

/// Every message in `queue` (acknowledged), as (envelope, message id, delivery mode).
async fn drain(channel: &Channel, queue: &str) -> Vec<(Value, String, u8)> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let properties = &message.delivery.properties;
        messages.push((
            serde_json::from_slice(&message.delivery.data).expect("JSON envelope"),
            properties
                .message_id()
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            properties.delivery_mode().unwrap_or_default(),
        ));
    }
    messages
}

async fn delete(channel: &Channel, queue: &str) {
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_results_land_in_the_queue_as_the_envelope_documents() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let queue = queue_name();
    let (batch_id, ids) = submit(&app, &vec![json!({ "rabbitmqQueue": queue }); 1000]).await;
    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["delivered"], 1000);

    let (_connection, channel) = channel().await;
    let messages = drain(&channel, &queue).await;
    assert_eq!(
        messages.len(),
        1000,
        "exactly one message per confirmed delivery"
    );
    let mut seen = HashSet::new();
    for (envelope, message_id, delivery_mode) in &messages {
        assert_eq!(envelope["type"], "request.result");
        assert_eq!(envelope["batch_id"], batch_id.as_str());
        assert!(envelope["response"].is_object());
        assert_eq!(envelope["delivery_id"], message_id.as_str());
        assert_eq!(*delivery_mode, 2, "persistent");
        let index: usize = envelope["custom_id"].as_str().expect("custom id")[1..]
            .parse()
            .expect("index");
        assert_eq!(envelope["request_id"], ids[index].as_str());
        seen.insert(index);
    }
    assert_eq!(seen.len(), 1000, "every result is in the queue");
    assert!(messages.len() >= 1000);
    delete(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn results_reach_a_named_exchange_with_their_routing_key() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let (_connection, channel) = channel().await;
    let (exchange, queue) = (queue_name(), queue_name());
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "results.eu".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    let delivery =
        json!({ "rabbitmqExchange": { "exchange": exchange, "routingKey": "results.eu" } });
    let (batch_id, _) = submit(&app, &vec![delivery; 5]).await;
    batch_when(&app, &batch_id, "done").await;
    assert_eq!(drain(&channel, &queue).await.len(), 5);
    delete(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_exchange_fails_its_own_results_only() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let queue = queue_name();
    let missing = json!({ "rabbitmqExchange": { "exchange": queue_name(), "routingKey": "k" } });
    let mut deliveries = vec![missing; 3];
    deliveries.extend(vec![json!({ "rabbitmqQueue": queue }); 20]);
    let (batch_id, ids) = submit(&app, &deliveries).await;
    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["deliveryFailed"], 3, "{batch}");
    assert_eq!(batch["requestCounts"]["delivered"], 20, "{batch}");
    let attempts = attempts_recorded(&app, &ids[..3]).await;
    assert_eq!(attempts, 3, "a missing exchange is final, not retried");
    let (_connection, channel) = channel().await;
    assert_eq!(drain(&channel, &queue).await.len(), 20);
    delete(&channel, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_that_goes_away_mid_run_loses_nothing() {
    let db = TestDb::new().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let port = proxy.port;
    let app = app_with_provider(&db, |c| {
        c.delivery.rabbitmq_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        c.delivery.delivery_concurrency = 4;
        c.delivery.delivery_per_target = 4;
        c.delivery.delivery_timeout_ms = 1_000;
        c.delivery.delivery_max_attempts = 30;
    })
    .await;
    let queue = queue_name();
    let (batch_id, ids) = submit(&app, &vec![json!({ "rabbitmqQueue": queue }); 300]).await;
    let delivered = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM requests WHERE status = 'delivered'")
            .fetch_one(&app.pool)
            .await
            .ok()
    };
    eventually(Duration::from_secs(60), "some deliveries", || async {
        (delivered().await? >= 20).then_some(())
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    let batch = batch_when(&app, &batch_id, "done").await;
    assert_eq!(batch["requestCounts"]["delivered"], 300, "{batch}");

    let (_connection, channel) = channel().await;
    let messages = drain(&channel, &queue).await;
    let mut by_request: HashMap<String, HashSet<String>> = HashMap::new();
    for (envelope, message_id, _) in &messages {
        by_request
            .entry(envelope["request_id"].as_str().expect("id").to_owned())
            .or_default()
            .insert(message_id.clone());
    }
    assert_eq!(by_request.len(), ids.len(), "every result is in the queue");
    assert!(
        by_request.values().all(|ids| ids.len() == 1),
        "a repeat carries the same delivery id"
    );
    let failed_attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM delivery_attempts WHERE outcome = 'retry'")
            .fetch_one(&app.pool)
            .await
            .expect("attempts");
    assert!(failed_attempts > 0, "the outage was seen and retried");
    delete(&channel, &queue).await;
}
