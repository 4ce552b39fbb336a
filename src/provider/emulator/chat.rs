//! `POST /v1/chat/completions`: a plausible, labelled answer. With a `json_schema` response
//! format the content is JSON: a patient's line for `patient_reply`, a hotwash for `hotwash`,
//! and for any other schema its required string properties filled with `[emulated]`.

use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::now;

/// Answers one chat completion.
pub(super) async fn complete(Json(body): Json<Value>) -> Response {
    let model = body["model"].as_str().unwrap_or("emulated-model");
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("hello");
    let format = &body["response_format"];
    let content = if format["type"] == "json_schema" {
        let schema = &format["json_schema"];
        structured(
            schema["name"].as_str().unwrap_or_default(),
            &schema["schema"],
            last,
        )
        .to_string()
    } else {
        format!("[emulated] {last}")
    };
    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m["content"].as_str())
        .map(str::len)
        .sum();
    let (prompt_tokens, completion_tokens) = (prompt_chars / 4 + 1, content.len() / 4 + 1);
    let created = now();
    Json(json!({
        "id": format!("chatcmpl-emu-{created}"), "object": "chat.completion",
        "created": created, "model": model,
        "choices": [{ "index": 0, "finish_reason": "stop",
                      "message": { "role": "assistant", "content": content } }],
        "usage": { "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                   "total_tokens": prompt_tokens + completion_tokens },
    }))
    .into_response()
}

fn structured(name: &str, schema: &Value, last: &str) -> Value {
    match name {
        "patient_reply" => json!({
            "reply": format!("[emulated] You said: {last}"),
            "emotion": "neutral",
        }),
        "hotwash" => json!({
            "went_well": ["[emulated] built rapport"],
            "missed": ["[emulated] asked about allergies"],
            "scores": [
                { "item": "history taking", "score": 3, "comment": "[emulated]" },
                { "item": "communication", "score": 4, "comment": "[emulated]" },
            ],
        }),
        _ => {
            let fields: Map<String, Value> = schema["required"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|field| (field.to_owned(), json!("[emulated]")))
                .collect();
            Value::Object(fields)
        }
    }
}
