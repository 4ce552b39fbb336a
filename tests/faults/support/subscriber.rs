//! A graphql-transport-ws subscriber that keeps every `next` payload, reading as fast as it
//! can or with a pause before each message (a slow consumer: unread data backs up in the
//! socket, and the server has to hold back).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::server::ADMIN_KEY;

/// What the reading task shares.
#[derive(Default)]
struct Shared {
    pause_ms: AtomicU64,
    data: Mutex<Vec<Value>>,
}

/// A running subscription.
pub struct Subscriber {
    shared: Arc<Shared>,
    task: JoinHandle<String>,
}

impl Subscriber {
    /// Connects as the admin, subscribes with `query` and starts reading.
    pub async fn start(ws_url: &str, query: &str) -> Self {
        let mut request = ws_url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        let init = json!({ "type": "connection_init",
                           "payload": { "Authorization": format!("Bearer {ADMIN_KEY}") } });
        let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
        for message in [init, subscribe] {
            socket
                .send(Message::text(message.to_string()))
                .await
                .expect("websocket send");
        }
        let shared = Arc::new(Shared::default());
        let reading = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Some(frame) = socket.next().await {
                let text = match frame {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(_)) => return "the server closed the connection".into(),
                    Ok(_) => continue,
                    Err(error) => return format!("websocket error: {error}"),
                };
                let message: Value = serde_json::from_str(&text).unwrap_or_default();
                match message["type"].as_str() {
                    Some("next") => {
                        let pause = reading.pause_ms.load(Ordering::SeqCst);
                        if pause > 0 {
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                        let data = message["payload"]["data"].clone();
                        reading.data.lock().expect("data").push(data);
                    }
                    Some("ping") => {
                        let pong = Message::text(json!({ "type": "pong" }).to_string());
                        if socket.send(pong).await.is_err() {
                            return "could not answer a ping".into();
                        }
                    }
                    Some("connection_ack" | "pong") => {}
                    _ => return format!("unexpected message {message}"),
                }
            }
            "the connection ended".into()
        });
        Self { shared, task }
    }

    /// Pauses this long before taking each next message (zero: at once).
    pub fn pause(&self, pause: Duration) {
        let millis = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.shared.pause_ms.store(millis, Ordering::SeqCst);
    }

    /// Messages taken so far.
    pub fn count(&self) -> usize {
        self.shared.data.lock().expect("data").len()
    }

    /// Waits (at most `deadline`) until `expected` messages were taken, then closes the
    /// connection and returns each message's `data`, in order. Fails if the subscription
    /// ended by itself.
    pub async fn finish(self, expected: usize, deadline: Duration) -> Vec<Value> {
        let give_up = tokio::time::Instant::now() + deadline;
        while self.count() < expected {
            if self.task.is_finished() {
                let reason = self.task.await.unwrap_or_else(|e| e.to_string());
                panic!("the subscription ended early: {reason}");
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "the subscriber took {} of {expected} messages",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.task.abort();
        let data = std::mem::take(&mut *self.shared.data.lock().expect("data"));
        data
    }
}
