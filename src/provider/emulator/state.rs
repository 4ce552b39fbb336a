//! The emulator's memory: uploaded files and batches, and how a batch moves through the real
//! status progression (validating → in_progress → finalizing → completed) as it is polled.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// How the emulator misbehaves, for tests and demos.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Batches fail validation with this message.
    pub fail_batches: Option<String>,
    /// Batches expire while in progress; half of their requests have results.
    pub expire_batches: bool,
    /// Every n-th API call answers 429 with `Retry-After: 0` (0: never).
    pub rate_limit_every: u64,
    /// Every n-th API call answers 503 (0: never).
    pub unavailable_every: u64,
    /// Polls a batch stays in each of validating, in_progress and finalizing.
    pub polls_per_status: u32,
    /// Uploads are refused as invalid (400).
    pub reject_uploads: bool,
    /// Added to every answer, in milliseconds.
    pub latency_ms: u64,
    /// The first this-many file downloads break off halfway, as a dropped connection does.
    pub cut_first_downloads: u64,
}

/// An uploaded file.
pub(super) struct File {
    pub(super) bytes: Vec<u8>,
    pub(super) purpose: String,
    pub(super) filename: String,
    pub(super) created_at: i64,
}

/// A batch, as the emulator tracks it.
pub(super) struct Batch {
    pub(super) id: String,
    pub(super) endpoint: String,
    pub(super) input_file_id: String,
    pub(super) completion_window: String,
    pub(super) metadata: Value,
    pub(super) created_at: i64,
    pub(super) status: &'static str,
    pub(super) polls: u32,
    pub(super) output_file_id: Option<String>,
    pub(super) error_file_id: Option<String>,
    pub(super) counts: (u64, u64, u64),
    pub(super) errors: Option<Value>,
}

/// Everything the emulator holds.
#[derive(Default)]
pub(super) struct State {
    pub(super) files: BTreeMap<String, File>,
    pub(super) batches: BTreeMap<String, Batch>,
    pub(super) messages: BTreeMap<String, super::messages::MessageBatch>,
    pub(super) calls: u64,
    pub(super) azure_calls: u64,
    pub(super) downloads: u64,
    next_id: u64,
}

impl State {
    pub(super) fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-emu-{:06}", self.next_id)
    }

    /// Moves a batch one poll further along its progression.
    pub(super) fn advance(&mut self, batch_id: &str, faults: &Faults, now: i64) {
        let Some(batch) = self.batches.get_mut(batch_id) else {
            return;
        };
        batch.polls += 1;
        if batch.polls <= faults.polls_per_status {
            return;
        }
        batch.polls = 0;
        let next = match batch.status {
            "validating" if faults.fail_batches.is_some() => "failed",
            "validating" => "in_progress",
            "in_progress" if faults.expire_batches => "expired",
            "in_progress" => "finalizing",
            "finalizing" => "completed",
            "cancelling" => "cancelled",
            settled => settled,
        };
        if next == batch.status {
            return;
        }
        batch.status = next;
        match next {
            "failed" => {
                let message = faults.fail_batches.clone().unwrap_or_default();
                batch.errors = Some(json!({ "object": "list", "data": [
                    { "code": "invalid_request", "message": message, "param": null, "line": null }
                ]}));
            }
            "completed" | "expired" => {
                let input_id = batch.input_file_id.clone();
                let share = if next == "expired" { 2 } else { 1 };
                self.produce_results(batch_id, &input_id, share, now);
            }
            _ => {}
        }
    }

    /// Writes the output and error files of a finished batch: every `share`-th request gets a
    /// result (1: all), requests whose body asks for `"emulator_error": true` get an error.
    fn produce_results(&mut self, batch_id: &str, input_file_id: &str, share: usize, now: i64) {
        let input = self
            .files
            .get(input_file_id)
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .unwrap_or_default();
        let (mut output, mut errors) = (String::new(), String::new());
        let (mut completed, mut failed, mut total) = (0, 0, 0);
        for (index, line) in input.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            total += 1;
            let Ok(request) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if index % share != 0 {
                continue;
            }
            let custom_id = request["custom_id"].clone();
            let line_id = format!("batch_req_emu_{batch_id}_{index}");
            if request["body"]["emulator_error"] == json!(true) {
                failed += 1;
                let error = json!({ "id": line_id, "custom_id": custom_id, "response": null,
                    "error": { "code": "emulated_error",
                               "message": "[emulated] the request asked for an error" } });
                errors.push_str(&format!("{error}\n"));
            } else {
                completed += 1;
                let body = fake_body(&request, now);
                let result = json!({ "id": line_id, "custom_id": custom_id, "error": null,
                    "response": { "status_code": 200, "request_id": format!("req_emu_{index}"),
                                  "body": body } });
                output.push_str(&format!("{result}\n"));
            }
        }
        let output_id = (!output.is_empty()).then(|| self.store_output(output, now));
        let error_id = (!errors.is_empty()).then(|| self.store_output(errors, now));
        if let Some(batch) = self.batches.get_mut(batch_id) {
            batch.output_file_id = output_id;
            batch.error_file_id = error_id;
            batch.counts = (total, completed, failed);
        }
    }

    fn store_output(&mut self, content: String, now: i64) -> String {
        let id = self.id("file");
        self.files.insert(
            id.clone(),
            File {
                bytes: content.into_bytes(),
                purpose: "batch_output".into(),
                filename: format!("{id}.jsonl"),
                created_at: now,
            },
        );
        id
    }
}

/// A plausible, clearly labelled fake response for a request line.
fn fake_body(request: &Value, now: i64) -> Value {
    let body = &request["body"];
    let model = body["model"].as_str().unwrap_or("emulated-model");
    match request["url"].as_str().unwrap_or_default() {
        "/v1/embeddings" | "/embeddings" => json!({
            "object": "list", "model": model,
            "data": [{ "object": "embedding", "index": 0,
                       "embedding": [0.0125, -0.0042, 0.0371] }],
            "usage": { "prompt_tokens": 3, "total_tokens": 3 },
        }),
        _ => {
            let prompt = body["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .or_else(|| body["input"].as_str())
                .or_else(|| body["prompt"].as_str())
                .unwrap_or_default();
            json!({
                "id": format!("chatcmpl-emu-{now}"), "object": "chat.completion",
                "created": now, "model": model,
                "choices": [{ "index": 0, "finish_reason": "stop",
                              "message": { "role": "assistant",
                                           "content": format!("[emulated] {prompt}") } }],
                "usage": { "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
                           "prompt_tokens_details": { "cached_tokens": 2 } },
            })
        }
    }
}

impl Batch {
    /// The batch object, as the API returns it.
    pub(super) fn to_json(&self) -> Value {
        let (total, completed, failed) = self.counts;
        json!({
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": self.errors, "input_file_id": self.input_file_id,
            "completion_window": self.completion_window, "status": self.status,
            "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "request_counts": { "total": total, "completed": completed, "failed": failed },
            "metadata": self.metadata,
        })
    }
}

impl File {
    /// The file object, as the API returns it.
    pub(super) fn to_json(&self, id: &str) -> Value {
        json!({ "id": id, "object": "file", "bytes": self.bytes.len(),
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose })
    }
}
