//! What the bench's clients speak: GraphQL over HTTP (reqwest) and graphql-transport-ws
//! subscriptions (tokio-tungstenite), as any client of the service does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use futures::{SinkExt, Stream, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use crate::server::Server;

/// A GraphQL client over HTTP with the admin key; cheap to clone (one connection pool).
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    urls: Arc<[String]>,
    next: Arc<AtomicUsize>,
    key: String,
}

impl Client {
    /// A client of `server`.
    pub(crate) fn new(server: &Server) -> Self {
        Self::spread(&[server])
    }

    /// A client of several instances of one service, each call to the next in turn (as a
    /// round-robin load balancer sends requests).
    pub(crate) fn spread(servers: &[&Server]) -> Self {
        Self {
            http: reqwest::Client::new(),
            urls: servers.iter().map(|s| s.url.clone()).collect(),
            next: Arc::default(),
            key: servers.first().map(|s| s.key.clone()).unwrap_or_default(),
        }
    }

    /// A client of only the `n`th instance (in turn): what a load balancer gives one client
    /// whose connection it keeps on one instance.
    pub(crate) fn nth(&self, n: usize) -> Self {
        Self {
            urls: Arc::from([self.urls[n % self.urls.len()].clone()]),
            next: Arc::default(),
            ..self.clone()
        }
    }

    fn url(&self) -> &str {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.urls[turn % self.urls.len()]
    }

    /// Sends one operation; its `data`, or the GraphQL errors as an error.
    pub(crate) async fn call(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let mut response: Value = self
            .http
            .post(self.url())
            .bearer_auth(&self.key)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            response["errors"].is_null(),
            "GraphQL error: {}",
            response["errors"]
        );
        Ok(response["data"].take())
    }
}

/// `submitRequest`'s input for one request to `model`, to be pulled (no delivery target).
fn request_input(custom_id: &str, model: &str) -> Value {
    json!({
        "customId": custom_id,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": { "model": model, "messages": [{ "role": "user", "content": "Say hello." }] },
        "delivery": { "poll": true },
    })
}

const SUBMIT_ONE: &str = "mutation($input: SubmitRequestInput!) {
    submitRequest(input: $input) { requestId } }";
const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId } }";

impl Client {
    /// Submits one request; its id.
    pub(crate) async fn submit(&self, custom_id: &str, model: &str) -> anyhow::Result<String> {
        let input = request_input(custom_id, model);
        let data = self.call(SUBMIT_ONE, json!({ "input": input })).await?;
        data["submitRequest"]["requestId"]
            .as_str()
            .map(str::to_owned)
            .context("submitRequest answered no requestId")
    }

    /// Submits `count` requests to `model` in one call, custom ids `<prefix>-<n>`.
    pub(crate) async fn submit_many(
        &self,
        prefix: &str,
        model: &str,
        count: usize,
    ) -> anyhow::Result<()> {
        let requests: Vec<Value> = (0..count)
            .map(|n| request_input(&format!("{prefix}-{n}"), model))
            .collect();
        let data = self
            .call(SUBMIT_MANY, json!({ "requests": requests }))
            .await?;
        let accepted = data["submitRequests"].as_array().map_or(0, Vec::len);
        ensure!(
            accepted == count,
            "submitRequests accepted {accepted} of {count}"
        );
        Ok(())
    }
}

/// How long the read models may take to catch up after a workload.
const CATCH_UP: Duration = Duration::from_secs(300);

impl Client {
    /// Waits until every projection has applied the whole log (lag 0); how long it took.
    pub(crate) async fn caught_up(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let data = self.call("{ projections { name lag } }", json!({})).await?;
            let behind = data["projections"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["lag"].as_i64() != Some(0));
            if !behind {
                return Ok(started.elapsed());
            }
            ensure!(
                started.elapsed() < CATCH_UP,
                "projections did not catch up within {CATCH_UP:?}: {data}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Subscribes over a websocket of its own (key in `connection_init`); the `data` of every
/// `next` message, until the server ends the stream.
pub(crate) async fn subscribe(
    server: &Server,
    query: &str,
) -> anyhow::Result<impl Stream<Item = anyhow::Result<Value>>> {
    let mut request = server.ws_url.as_str().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await?;
    let init = json!({ "type": "connection_init",
                       "payload": { "Authorization": format!("Bearer {}", server.key) } });
    socket.send(Message::text(init.to_string())).await?;
    let ack = next_json(&mut socket).await?;
    ensure!(ack["type"] == "connection_ack", "no connection_ack: {ack}");
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": query } });
    socket.send(Message::text(subscribe.to_string())).await?;
    Ok(futures::stream::unfold(socket, |mut socket| async move {
        loop {
            let message = match next_json(&mut socket).await {
                Ok(message) => message,
                Err(error) => return Some((Err(error), socket)),
            };
            match message["type"].as_str() {
                Some("next") => {
                    return Some((Ok(message["payload"]["data"].clone()), socket));
                }
                Some("ping") => {
                    let pong = Message::text(json!({ "type": "pong" }).to_string());
                    if let Err(error) = socket.send(pong).await {
                        return Some((Err(error.into()), socket));
                    }
                }
                Some("complete") => return None,
                _ => return Some((Err(anyhow::anyhow!("subscription: {message}")), socket)),
            }
        }
    }))
}

async fn next_json<S>(socket: &mut S) -> anyhow::Result<Value>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(frame) = socket.next().await {
        match frame? {
            Message::Text(text) => return Ok(serde_json::from_str(&text)?),
            Message::Close(_) => break,
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    bail!("the websocket closed")
}
