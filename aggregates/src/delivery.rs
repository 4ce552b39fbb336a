//! How a request's result reaches its owner.

use serde::{Deserialize, Serialize};
use url::Url;

const MAX_QUEUE_BYTES: usize = 255;

/// The delivery a request asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Delivery {
    /// POST the result to this absolute http(s) URL.
    Webhook {
        /// The receiver's URL.
        url: String,
    },
    /// Publish the result to this RabbitMQ queue.
    Rabbitmq {
        /// The queue's name.
        queue: String,
    },
    /// Publish the result to this RabbitMQ exchange with this routing key.
    RabbitmqExchange {
        /// The exchange, which must exist.
        exchange: String,
        /// The routing key.
        routing_key: String,
    },
    /// Keep the result until the owner fetches and acknowledges it.
    Poll,
}

impl Delivery {
    /// A webhook delivery.
    ///
    /// # Errors
    /// The URL is not an absolute http(s) URL with a host.
    pub fn webhook(url: &str) -> Result<Self, String> {
        let parsed = Url::parse(url).map_err(|e| format!("webhook url `{url}` is invalid: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!(
                "webhook url `{url}` must be an absolute http(s) url"
            ));
        }
        Ok(Self::Webhook {
            url: parsed.to_string(),
        })
    }

    /// A RabbitMQ delivery.
    ///
    /// # Errors
    /// The name is empty, longer than 255 bytes, uses the reserved `amq.` prefix, or contains
    /// control characters.
    pub fn rabbitmq(queue: &str) -> Result<Self, String> {
        if queue.is_empty() || queue.len() > MAX_QUEUE_BYTES {
            return Err(format!("queue name must be 1 to {MAX_QUEUE_BYTES} bytes"));
        }
        if queue.starts_with("amq.") {
            return Err(format!(
                "queue name `{queue}` uses the reserved `amq.` prefix"
            ));
        }
        if queue.chars().any(char::is_control) {
            return Err("queue name must not contain control characters".into());
        }
        Ok(Self::Rabbitmq {
            queue: queue.to_owned(),
        })
    }

    /// A RabbitMQ delivery through an existing exchange.
    ///
    /// # Errors
    /// The exchange name is empty, or either name is longer than 255 bytes or contains
    /// control characters.
    pub fn rabbitmq_exchange(exchange: &str, routing_key: &str) -> Result<Self, String> {
        if exchange.is_empty() {
            return Err("exchange name must not be empty".into());
        }
        for (what, name) in [("exchange name", exchange), ("routing key", routing_key)] {
            if name.len() > MAX_QUEUE_BYTES {
                return Err(format!("{what} must be at most {MAX_QUEUE_BYTES} bytes"));
            }
            if name.chars().any(char::is_control) {
                return Err(format!("{what} must not contain control characters"));
            }
        }
        Ok(Self::RabbitmqExchange {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
        })
    }

    /// What deliveries share for fairness: a webhook's origin (`https://host:port`), a
    /// RabbitMQ queue (`amqp queue <name>`) or exchange (`amqp exchange <name>`); `None` for
    /// poll delivery.
    pub fn target(&self) -> Option<String> {
        match self {
            Self::Webhook { url } => Some(
                Url::parse(url)
                    .map(|u| u.origin().ascii_serialization())
                    .unwrap_or_else(|_| url.clone()),
            ),
            Self::Rabbitmq { queue } => Some(format!("amqp queue {queue}")),
            Self::RabbitmqExchange { exchange, .. } => Some(format!("amqp exchange {exchange}")),
            Self::Poll => None,
        }
    }

    /// True when the owner pulls the result.
    pub fn is_poll(&self) -> bool {
        matches!(self, Self::Poll)
    }
}

#[cfg(test)]
mod tests {
    use super::Delivery;

    #[test]
    fn webhooks_need_absolute_http_urls() {
        assert!(Delivery::webhook("https://example.test/hook").is_ok());
        assert!(Delivery::webhook("http://127.0.0.1:9000/x").is_ok());
        for bad in [
            "",
            "/relative",
            "ftp://example.test/x",
            "https://",
            "not a url",
        ] {
            assert!(Delivery::webhook(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn queue_names_follow_rabbitmq_rules() {
        assert!(Delivery::rabbitmq("results.client-1").is_ok());
        for bad in [
            String::new(),
            "amq.direct".into(),
            "a\nb".into(),
            "q".repeat(256),
        ] {
            assert!(Delivery::rabbitmq(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn webhooks_share_a_target_per_origin() {
        let a = Delivery::webhook("https://user:pw@Receiver.test:443/a?x=1").unwrap();
        let b = Delivery::webhook("https://receiver.test/b").unwrap();
        assert_eq!(a.target().as_deref(), Some("https://receiver.test"));
        assert_eq!(a.target(), b.target());
        assert_eq!(
            Delivery::webhook("http://127.0.0.1:9000/x")
                .unwrap()
                .target()
                .as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert_eq!(
            Delivery::rabbitmq("results").unwrap().target().as_deref(),
            Some("amqp queue results")
        );
        assert_eq!(Delivery::Poll.target(), None);
    }

    #[test]
    fn exchanges_need_a_name_and_routing_keys_may_be_empty() {
        assert!(Delivery::rabbitmq_exchange("amq.topic", "results.eu").is_ok());
        assert!(Delivery::rabbitmq_exchange("results", "").is_ok());
        assert!(Delivery::rabbitmq_exchange("", "key").is_err());
        assert!(Delivery::rabbitmq_exchange("x", &"k".repeat(256)).is_err());
        assert!(Delivery::rabbitmq_exchange("x\u{7}", "k").is_err());
    }
}
