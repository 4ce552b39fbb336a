//! A graphql-transport-ws client over a real websocket.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// One subscription on its own connection.
pub struct Subscription {
    socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Subscription {
    /// Connects as the bootstrap admin, initializes and subscribes.
    pub async fn start(url: &str, query: &str, variables: Value) -> Self {
        Self::start_as(url, super::app::ADMIN_KEY, query, variables).await
    }

    /// Connects with API key `key` (sent in `connection_init`), initializes and subscribes.
    pub async fn start_as(url: &str, key: &str, query: &str, variables: Value) -> Self {
        let mut request = url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("graphql-transport-ws"),
        );
        let (mut socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket connect");
        send(
            &mut socket,
            json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {key}") } }),
        )
        .await;
        let ack = next_message(&mut socket).await.expect("connection_ack");
        assert_eq!(ack["type"], "connection_ack", "{ack}");
        send(
            &mut socket,
            json!({ "id": "1", "type": "subscribe",
                    "payload": { "query": query, "variables": variables } }),
        )
        .await;
        Self { socket }
    }

    /// The next `next` payload's `data`, or `None` if nothing arrives within `wait`.
    pub async fn next_data(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(wait, next_message(&mut self.socket))
                .await
                .ok()??;
            match message["type"].as_str() {
                Some("next") => return Some(message["payload"]["data"].clone()),
                Some("ping") => send(&mut self.socket, json!({ "type": "pong" })).await,
                _ => panic!("unexpected message {message}"),
            }
        }
    }

    /// The next message of any type, e.g. an `error`.
    pub async fn next_message(&mut self, wait: Duration) -> Option<Value> {
        tokio::time::timeout(wait, next_message(&mut self.socket))
            .await
            .ok()?
    }

    /// Sends a `subscribe` for another operation on this socket.
    pub async fn subscribe(&mut self, id: &str, query: &str) {
        send(
            &mut self.socket,
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
        )
        .await;
    }

    /// Sends a `complete` for operation `id`.
    pub async fn complete(&mut self, id: &str) {
        send(&mut self.socket, json!({ "id": id, "type": "complete" })).await;
    }

    /// The close code the server ends the socket with within `wait`, skipping any other
    /// message; `None` if it stays open (or ends without a close frame).
    pub async fn close_code(&mut self, wait: Duration) -> Option<u16> {
        tokio::time::timeout(wait, async {
            while let Some(frame) = self.socket.next().await {
                if let Message::Close(close) = frame.ok()? {
                    return close.map(|frame| u16::from(frame.code));
                }
            }
            None
        })
        .await
        .ok()?
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

async fn send(socket: &mut WebSocketStream<MaybeTlsStream<TcpStream>>, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("websocket send");
}

async fn next_message(socket: &mut WebSocketStream<MaybeTlsStream<TcpStream>>) -> Option<Value> {
    while let Some(frame) = socket.next().await {
        match frame.ok()? {
            Message::Text(text) => return serde_json::from_str(&text).ok(),
            Message::Close(_) => return None,
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    None
}
