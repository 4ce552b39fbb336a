//! RabbitMQ delivery with lapin: persistent messages, publisher confirms, one connection
//! re-established after a failure. A result counts as delivered only once the broker
//! confirmed it; an unroutable message (mandatory flag) comes back and is retried.
//!
//! Destinations are checked once per connection on a throwaway channel (a queue declared
//! durable if missing, or found as it is; an exchange found passively), because a broker
//! error closes the channel it happened on: one owner's missing exchange must not break the
//! shared publishing channel for everyone. A missing exchange or a refused queue is final.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind,
    ExchangeKind,
};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::outcome::SendOutcome;

/// Where a message goes.
#[derive(Debug, Clone, Copy)]
pub enum Route<'a> {
    /// This queue (declared durable if missing), through the default exchange.
    Queue(&'a str),
    /// This existing exchange with this routing key.
    Exchange {
        /// The exchange.
        exchange: &'a str,
        /// The routing key.
        routing_key: &'a str,
    },
}

impl Route<'_> {
    /// The destination's name as checked and cached: `queue <name>` or `exchange <name>`.
    fn key(&self) -> String {
        match self {
            Self::Queue(queue) => format!("queue {queue}"),
            Self::Exchange { exchange, .. } => format!("exchange {exchange}"),
        }
    }
}

/// One open connection, its confirm-mode channel, and the destinations checked on it.
struct Link {
    generation: u64,
    connection: Connection,
    channel: Channel,
    checked: HashSet<String>,
}

/// Publishes envelopes to the broker.
pub struct RabbitPublisher {
    url: String,
    timeout: Duration,
    link: Mutex<Option<Link>>,
}

/// Why a publish did not happen.
enum Failure {
    /// The broker or the connection failed; the link is replaced.
    Broker(lapin::Error),
    /// The destination cannot be used (missing exchange, refused queue).
    Destination(String),
}

impl RabbitPublisher {
    /// A publisher to the broker at `url`; it connects on first use.
    pub fn new(url: String, timeout: Duration) -> Self {
        Self {
            url,
            timeout,
            link: Mutex::new(None),
        }
    }

    /// Publishes one attempt and waits for the broker's confirm.
    pub async fn publish(
        &self,
        route: Route<'_>,
        body: &[u8],
        delivery_id: Uuid,
        attempt: u32,
    ) -> SendOutcome {
        let mut generation = None;
        let published = tokio::time::timeout(self.timeout, async {
            let (channel, current) = self.channel(route).await?;
            generation = Some(current);
            Self::send(&channel, route, body, delivery_id, attempt)
                .await
                .map_err(Failure::Broker)
        })
        .await;
        let error = match published {
            Ok(Ok(Confirmation::Ack(None))) => return SendOutcome::Accepted { status_code: None },
            Ok(Ok(Confirmation::Ack(Some(_)))) => {
                // Perhaps the queue was deleted since it was checked: check again next time.
                self.forget(route).await;
                "the broker could not route the message".into()
            }
            Ok(Ok(Confirmation::Nack(_))) => "the broker refused the message".into(),
            Ok(Ok(Confirmation::NotRequested)) => "the broker did not confirm".into(),
            Ok(Err(Failure::Destination(error))) => {
                return SendOutcome::Rejected {
                    status_code: None,
                    error,
                }
            }
            Ok(Err(Failure::Broker(error))) => {
                self.reset(generation).await;
                format!("broker error: {error}")
            }
            Err(_) => {
                self.reset(generation).await;
                format!("no confirm within {} ms", self.timeout.as_millis())
            }
        };
        SendOutcome::Transient {
            status_code: None,
            error,
            retry_after: None,
        }
    }

    async fn send(
        channel: &Channel,
        route: Route<'_>,
        body: &[u8],
        delivery_id: Uuid,
        attempt: u32,
    ) -> Result<Confirmation, lapin::Error> {
        let (exchange, routing_key) = match route {
            Route::Queue(queue) => ("", queue),
            Route::Exchange {
                exchange,
                routing_key,
            } => (exchange, routing_key),
        };
        let mut headers = FieldTable::default();
        headers.insert("attempt".into(), AMQPValue::LongUInt(attempt));
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(delivery_id.to_string().into())
            .with_type("request.result".into())
            .with_headers(headers);
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?
            .await
    }

    /// The publishing channel and its link's generation, (re)connecting first if needed,
    /// with `route`'s destination checked.
    async fn channel(&self, route: Route<'_>) -> Result<(Channel, u64), Failure> {
        let mut guard = self.link.lock().await;
        let alive = guard
            .as_ref()
            .is_some_and(|link| link.channel.status().connected());
        if !alive {
            let generation = guard.as_ref().map_or(0, |link| link.generation + 1);
            *guard = Some(self.connect(generation).await.map_err(Failure::Broker)?);
        }
        let Some(link) = guard.as_mut() else {
            return Err(Failure::Destination("no broker connection".into()));
        };
        let key = route.key();
        if !link.checked.contains(&key) {
            check(&link.connection, route).await?;
            link.checked.insert(key);
        }
        Ok((link.channel.clone(), link.generation))
    }

    async fn connect(&self, generation: u64) -> Result<Link, lapin::Error> {
        let connection = Connection::connect(&self.url, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            generation,
            connection,
            channel,
            checked: HashSet::new(),
        })
    }

    /// Drops the link of `generation` (not a newer one another attempt already opened).
    async fn reset(&self, generation: Option<u64>) {
        let mut guard = self.link.lock().await;
        if guard.as_ref().map(|link| link.generation) == generation {
            *guard = None;
        }
    }

    async fn forget(&self, route: Route<'_>) {
        if let Some(link) = self.link.lock().await.as_mut() {
            link.checked.remove(&route.key());
        }
    }
}

/// Checks a destination on its own channel: a queue is declared durable if missing (or
/// accepted as it is, when it exists with other arguments); an exchange must exist.
async fn check(connection: &Connection, route: Route<'_>) -> Result<(), Failure> {
    let attempt = |passive: bool| async move {
        let channel = connection.create_channel().await?;
        let result = match route {
            Route::Queue(queue) => {
                let options = QueueDeclareOptions {
                    passive,
                    durable: true,
                    ..QueueDeclareOptions::default()
                };
                channel
                    .queue_declare(queue.into(), options, FieldTable::default())
                    .await
                    .map(drop)
            }
            Route::Exchange { exchange, .. } => {
                let options = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(
                        exchange.into(),
                        ExchangeKind::Direct,
                        options,
                        FieldTable::default(),
                    )
                    .await
            }
        };
        if result.is_ok() {
            channel.close(200, "checked".into()).await.ok();
        }
        result
    };
    match attempt(false).await {
        Ok(()) => Ok(()),
        Err(error) if soft(&error) == Some(AMQPSoftError::PRECONDITIONFAILED) => {
            attempt(true).await.map_err(|e| destination(route, &e))
        }
        Err(error) if soft(&error).is_some() => Err(destination(route, &error)),
        Err(error) => Err(Failure::Broker(error)),
    }
}

/// The broker's channel-level error, if that is what `error` is.
fn soft(error: &lapin::Error) -> Option<AMQPSoftError> {
    let ErrorKind::ProtocolError(amqp) = error.kind() else {
        return None;
    };
    match amqp.kind() {
        AMQPErrorKind::Soft(soft) => Some(soft.clone()),
        AMQPErrorKind::Hard(_) => None,
    }
}

fn destination(route: Route<'_>, error: &lapin::Error) -> Failure {
    Failure::Destination(format!("the broker refused {}: {error}", route.key()))
}
