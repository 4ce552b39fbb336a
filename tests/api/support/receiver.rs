//! A webhook receiver on a random port that records every call and answers as told.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200 at once.
    Accept,
    /// 503 to the first `n` attempts of each delivery id, then 200.
    FailFirst(u32),
    /// This status, always.
    Status(u16),
    /// Never answers in time: sleeps this long, then 200.
    Hang(Duration),
    /// Answers 200 after this long.
    Slow(Duration),
}

/// One call as received (`accepted` once it was answered 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// True when this call was answered 2xx.
    pub accepted: bool,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON envelope")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    /// True when `Chronicle-Signature` is HMAC-SHA256(secret, "<t>.<body>").
    pub fn signed_with(&self, secret: &str) -> bool {
        let signature = self.header("chronicle-signature");
        let mut timestamp = None;
        let mut v1 = None;
        for part in signature.split(',') {
            match part.split_once('=') {
                Some(("t", value)) => timestamp = Some(value),
                Some(("v1", value)) => v1 = Some(value),
                _ => {}
            }
        }
        let (Some(timestamp), Some(v1)) = (timestamp, v1) else {
            return false;
        };
        let Ok(expected) = hex::decode(v1) else {
            return false;
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("hmac key");
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(&self.body);
        mac.verify_slice(&expected).is_ok()
    }
}

#[derive(Clone)]
struct Shared {
    behaviour: Arc<Mutex<Behaviour>>,
    received: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<HashMap<String, u32>>>,
}

/// A running receiver.
pub struct Receiver {
    pub url: String,
    shared: Shared,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let shared = Shared {
            behaviour: Arc::new(Mutex::new(behaviour)),
            received: Arc::default(),
            attempts: Arc::default(),
        };
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            url: format!("http://{address}/hook"),
            shared,
        }
    }

    /// A URL on which nothing listens.
    pub async fn down_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        drop(listener);
        format!("http://{address}/hook")
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().expect("lock") = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("lock").clone()
    }

    /// Accepted calls.
    pub fn accepted(&self) -> Vec<Received> {
        self.received().into_iter().filter(|r| r.accepted).collect()
    }
}

async fn receive(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let behaviour = *shared.behaviour.lock().expect("lock");
    let delivery_id = headers
        .get("chronicle-delivery-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Recorded on arrival, so calls cut off mid-way (a hang, a crash) are seen too.
    let index = {
        let mut received = shared.received.lock().expect("lock");
        received.push(Received {
            headers,
            body,
            accepted: false,
        });
        received.len() - 1
    };
    let status = match behaviour {
        Behaviour::Accept => StatusCode::OK,
        Behaviour::FailFirst(n) => {
            let mut attempts = shared.attempts.lock().expect("lock");
            let seen = attempts.entry(delivery_id).or_default();
            *seen += 1;
            if *seen <= n {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
        Behaviour::Status(code) => StatusCode::from_u16(code).expect("status"),
        Behaviour::Hang(wait) | Behaviour::Slow(wait) => {
            tokio::time::sleep(wait).await;
            StatusCode::OK
        }
    };
    if status.is_success() && !matches!(behaviour, Behaviour::Hang(_)) {
        shared.received.lock().expect("lock")[index].accepted = true;
    }
    status
}
