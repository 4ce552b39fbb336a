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
}
