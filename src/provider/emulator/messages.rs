//! The emulator's Anthropic Message Batches routes: requests arrive inline, the batch is
//! `in_progress` for a few polls and then `ended`, and results come from its `results_url`.

use axum::extract::{Path, State as Shared};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, now, Emulator};

/// A message batch, as the emulator tracks it.
pub(super) struct MessageBatch {
    requests: Vec<Value>,
    ended: bool,
    canceled: bool,
    polls: u32,
    created_at: i64,
}

#[derive(Deserialize)]
pub(super) struct CreateMessageBatch {
    requests: Vec<Value>,
}

/// Which requests get which result type: every second one expires when the emulator
/// expires batches, cancelled batches cancel everything, `emulator_error` asks for an error.
fn outcome(batch: &MessageBatch, index: usize, request: &Value, expire: bool) -> &'static str {
    if batch.canceled {
        "canceled"
    } else if expire && index % 2 == 1 {
        "expired"
    } else if request["params"]["emulator_error"] == json!(true) {
        "errored"
    } else {
        "succeeded"
    }
}

fn to_json(emulator: &Emulator, id: &str, batch: &MessageBatch, host: &str) -> Value {
    let (mut counts, expire) = (
        std::collections::BTreeMap::<&str, u64>::new(),
        emulator.faults.expire_batches,
    );
    for (index, request) in batch.requests.iter().enumerate() {
        let kind = if batch.ended {
            outcome(batch, index, request, expire)
        } else {
            "processing"
        };
        *counts.entry(kind).or_default() += 1;
    }
    let count = |kind: &str| counts.get(kind).copied().unwrap_or(0);
    let status = match (batch.ended, batch.canceled) {
        (true, _) => "ended",
        (false, true) => "canceling",
        (false, false) => "in_progress",
    };
    json!({
        "id": id, "type": "message_batch", "processing_status": status,
        "request_counts": { "processing": count("processing"), "succeeded": count("succeeded"),
                            "errored": count("errored"), "canceled": count("canceled"),
                            "expired": count("expired") },
        "created_at": batch.created_at,
        "results_url": batch.ended
            .then(|| format!("http://{host}/v1/messages/batches/{id}/results")),
    })
}

fn host(headers: &HeaderMap) -> String {
    headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned()
}

pub(super) async fn create(
    Shared(emulator): Shared<Emulator>,
    headers: HeaderMap,
    Json(input): Json<CreateMessageBatch>,
) -> Response {
    if input.requests.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "no requests",
        );
    }
    let mut state = emulator.lock();
    let id = state.id("msgbatch");
    let batch = MessageBatch {
        requests: input.requests,
        ended: false,
        canceled: false,
        polls: 0,
        created_at: now(),
    };
    let body = to_json(&emulator, &id, &batch, &host(&headers));
    state.messages.insert(id, batch);
    Json(body).into_response()
}

pub(super) async fn retrieve(
    Shared(emulator): Shared<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = emulator.lock();
    let Some(batch) = state.messages.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found_error", "no such batch");
    };
    batch.polls += 1;
    // in_progress (or canceling) for as many polls as the other statuses take together.
    if batch.polls > emulator.faults.polls_per_status * 3 {
        batch.ended = true;
    }
    Json(to_json(&emulator, &id, batch, &host(&headers))).into_response()
}

pub(super) async fn cancel(
    Shared(emulator): Shared<Emulator>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let mut state = emulator.lock();
    let Some(batch) = state.messages.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found_error", "no such batch");
    };
    if !batch.ended {
        batch.canceled = true;
        batch.polls = 0;
    }
    Json(to_json(&emulator, &id, batch, &host(&headers))).into_response()
}

pub(super) async fn results(
    Shared(emulator): Shared<Emulator>,
    Path(id): Path<String>,
) -> Response {
    let state = emulator.lock();
    let Some(batch) = state.messages.get(&id).filter(|b| b.ended) else {
        return error(StatusCode::NOT_FOUND, "not_found_error", "no results yet");
    };
    let mut jsonl = String::new();
    for (index, request) in batch.requests.iter().enumerate() {
        let custom_id = &request["custom_id"];
        let result = match outcome(batch, index, request, emulator.faults.expire_batches) {
            "succeeded" => {
                let prompt = request["params"]["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    .unwrap_or_default();
                json!({ "type": "succeeded", "message": {
                    "id": format!("msg_emu_{index}"), "type": "message", "role": "assistant",
                    "model": request["params"]["model"], "stop_reason": "end_turn",
                    "content": [{ "type": "text", "text": format!("[emulated] {prompt}") }],
                    "usage": { "input_tokens": 5, "output_tokens": 5 } } })
            }
            "errored" => json!({ "type": "errored", "error": { "type": "invalid_request_error",
                "message": "[emulated] the request asked for an error" } }),
            other => json!({ "type": other }),
        };
        jsonl.push_str(&format!(
            "{}\n",
            json!({ "custom_id": custom_id, "result": result })
        ));
    }
    jsonl.into_response()
}
