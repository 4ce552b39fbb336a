//! RabbitMQ delivery with lapin: persistent messages, publisher confirms, one connection
//! re-established after any failure. A result counts as delivered only once the broker
//! confirmed it; an unroutable message (mandatory flag) comes back and is retried.

use std::collections::HashSet;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
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

/// One open connection and its confirm-mode channel.
struct Link {
    _connection: Connection,
    channel: Channel,
    declared: HashSet<String>,
}

/// Publishes envelopes to the broker.
pub struct RabbitPublisher {
    url: String,
    timeout: Duration,
    link: Mutex<Option<Link>>,
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
        let published = tokio::time::timeout(
            self.timeout,
            self.try_publish(route, body, delivery_id, attempt),
        )
        .await;
        let error = match published {
            Ok(Ok(Confirmation::Ack(None))) => return SendOutcome::Accepted { status_code: None },
            Ok(Ok(Confirmation::Ack(Some(_)))) => "the broker could not route the message".into(),
            Ok(Ok(Confirmation::Nack(_))) => "the broker refused the message".into(),
            Ok(Ok(Confirmation::NotRequested)) => "the broker did not confirm".into(),
            Ok(Err(error)) => {
                self.reset().await;
                format!("broker error: {error}")
            }
            Err(_) => {
                self.reset().await;
                format!("no confirm within {} ms", self.timeout.as_millis())
            }
        };
        SendOutcome::Transient {
            status_code: None,
            error,
            retry_after: None,
        }
    }

    async fn try_publish(
        &self,
        route: Route<'_>,
        body: &[u8],
        delivery_id: Uuid,
        attempt: u32,
    ) -> Result<Confirmation, lapin::Error> {
        let channel = self.channel(route).await?;
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

    /// The open channel, (re)connecting first if needed, with `route`'s queue declared.
    async fn channel(&self, route: Route<'_>) -> Result<Channel, lapin::Error> {
        let mut link = self.link.lock().await;
        let alive = link
            .as_ref()
            .is_some_and(|l| l.channel.status().connected());
        if !alive {
            let connection =
                Connection::connect(&self.url, ConnectionProperties::default()).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            *link = Some(Link {
                _connection: connection,
                channel,
                declared: HashSet::new(),
            });
        }
        let Some(open) = link.as_mut() else {
            return Err(lapin::Error::from(
                lapin::ErrorKind::InvalidConnectionState(lapin::ConnectionState::Closed),
            ));
        };
        if let Route::Queue(queue) = route {
            if !open.declared.contains(queue) {
                open.channel
                    .queue_declare(
                        queue.into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                open.declared.insert(queue.to_owned());
            }
        }
        Ok(open.channel.clone())
    }

    async fn reset(&self) {
        *self.link.lock().await = None;
    }
}
