//! An emulator of the OpenAI Files, Batch and Chat Completions APIs, and of Anthropic's
//! Message Batches, for tests and demos (`chronicle emulate-provider`). It speaks the real shapes — file objects, batch objects with the real
//! status progression and `request_counts`, JSONL output and error files — and answers with
//! plausible fakes, labelled `[emulated]` in every generated message and by the
//! `x-chronicle-emulator` header. Faults (failures, expiry, 429s, 503s) are configurable.

mod chat;
mod messages;
mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{Multipart, Path, Query, Request, State as Shared};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

pub use state::Faults;
use state::{Batch, File, State};

/// The emulator: state shared by its routes.
#[derive(Clone)]
pub struct Emulator {
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
    down: Arc<AtomicBool>,
}

pub(super) fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(super) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = json!({ "error": { "message": message, "type": "invalid_request_error",
                                  "param": null, "code": code } });
    (status, Json(body)).into_response()
}

impl Emulator {
    /// An emulator with these faults.
    pub fn new(faults: Faults) -> Self {
        Self {
            state: Arc::default(),
            faults: Arc::new(faults),
            down: Arc::default(),
        }
    }

    /// While `down`, every call answers 503: an outage for as long as a test wants one.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many batches were created (both APIs): crash tests check that a restart made no
    /// second one.
    pub fn batch_count(&self) -> usize {
        let state = self.lock();
        state.batches.len() + state.messages.len()
    }

    /// The value of metadata key `key` of every OpenAI batch, oldest first (`None` where it
    /// is missing): fault tests count how often each of the service's batches was created.
    pub fn metadata_values(&self, key: &str) -> Vec<Option<String>> {
        self.lock()
            .batches
            .values()
            .map(|b| {
                b.metadata
                    .get(key)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect()
    }

    /// Every batch's status, oldest first.
    pub fn statuses(&self) -> Vec<String> {
        self.lock()
            .batches
            .values()
            .map(|b| b.status.to_owned())
            .collect()
    }

    /// Calls made to the Azure OpenAI paths.
    pub fn azure_calls(&self) -> u64 {
        self.lock().azure_calls
    }

    /// The contents of every uploaded file, oldest first.
    pub fn uploads(&self) -> Vec<String> {
        self.lock()
            .files
            .values()
            .filter(|f| f.purpose == "batch")
            .map(|f| String::from_utf8_lossy(&f.bytes).into_owned())
            .collect()
    }

    /// The emulator's routes: OpenAI's under `/v1`, Azure OpenAI's under `/openai`, and
    /// Anthropic's Message Batches.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/openai/files", post(upload))
            .route("/openai/files/{id}/content", get(content))
            .route("/openai/batches", post(create).get(list))
            .route("/openai/batches/{id}", get(retrieve))
            .route("/openai/batches/{id}/cancel", post(cancel))
            .route("/v1/files", post(upload))
            .route("/v1/files/{id}/content", get(content))
            .route("/v1/batches", post(create).get(list))
            .route("/v1/batches/{id}", get(retrieve))
            .route("/v1/batches/{id}/cancel", post(cancel))
            .route("/v1/chat/completions", post(chat::complete))
            .route("/v1/messages/batches", post(messages::create))
            .route("/v1/messages/batches/{id}", get(messages::retrieve))
            .route("/v1/messages/batches/{id}/cancel", post(messages::cancel))
            .route("/v1/messages/batches/{id}/results", get(messages::results))
            .layer(middleware::from_fn_with_state(
                self.clone(),
                faults_and_label,
            ))
            .with_state(self.clone())
    }
}

/// Counts calls, injects the configured 429s and 503s, requires a bearer token, and labels
/// every response as emulated.
async fn faults_and_label(
    Shared(emulator): Shared<Emulator>,
    request: Request,
    next: Next,
) -> Response {
    let azure = request.uri().path().starts_with("/openai/");
    let call = {
        let mut state = emulator.lock();
        state.calls += 1;
        state.azure_calls += u64::from(azure);
        state.calls
    };
    let versioned = request
        .uri()
        .query()
        .is_some_and(|query| query.contains("api-version="));
    if emulator.faults.latency_ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(emulator.faults.latency_ms)).await;
    }
    let every = |n: u64| n > 0 && call % n == 0;
    let mut response = if every(emulator.faults.rate_limit_every) {
        let mut limited = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "[emulated] slow down",
        );
        limited
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static("0"));
        limited
    } else if every(emulator.faults.unavailable_every) || emulator.down.load(Ordering::SeqCst) {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "[emulated] try again",
        )
    } else if azure && (!versioned || !request.headers().contains_key("api-key")) {
        let message = "[emulated] Azure calls need api-version and the api-key header";
        error(
            StatusCode::BAD_REQUEST,
            "missing_required_parameter",
            message,
        )
    } else if !["authorization", "x-api-key", "api-key"]
        .iter()
        .any(|name| request.headers().contains_key(*name))
    {
        error(
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
            "[emulated] missing API key",
        )
    } else {
        next.run(request).await
    };
    response
        .headers_mut()
        .insert("x-chronicle-emulator", HeaderValue::from_static("true"));
    response
}

async fn upload(Shared(emulator): Shared<Emulator>, mut form: Multipart) -> Response {
    if emulator.faults.reject_uploads {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "[emulated] the file is invalid",
        );
    }
    let (mut purpose, mut file) = (None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("purpose") => purpose = field.text().await.ok(),
            Some("file") => {
                let filename = field.file_name().unwrap_or("input.jsonl").to_owned();
                file = field
                    .bytes()
                    .await
                    .ok()
                    .map(|bytes| (filename, bytes.to_vec()));
            }
            Some(_) | None => {}
        }
    }
    let (Some(purpose), Some((filename, bytes))) = (purpose, file) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "purpose and file are required",
        );
    };
    let mut state = emulator.lock();
    let id = state.id("file");
    let file = File {
        bytes,
        purpose,
        filename,
        created_at: now(),
    };
    let body = file.to_json(&id);
    state.files.insert(id, file);
    Json(body).into_response()
}

async fn content(Shared(emulator): Shared<Emulator>, Path(id): Path<String>) -> Response {
    let mut state = emulator.lock();
    state.downloads += 1;
    let cut = state.downloads <= emulator.faults.cut_first_downloads;
    let Some(file) = state.files.get(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such file");
    };
    if !cut {
        return file.bytes.clone().into_response();
    }
    // Half the file, then the connection "drops".
    let half = bytes::Bytes::copy_from_slice(&file.bytes[..file.bytes.len() / 2]);
    let broken: [Result<bytes::Bytes, std::io::Error>; 2] = [
        Ok(half),
        Err(std::io::Error::other("[emulated] connection dropped")),
    ];
    axum::body::Body::from_stream(futures::stream::iter(broken)).into_response()
}

#[derive(Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Value,
}

async fn create(Shared(emulator): Shared<Emulator>, Json(input): Json<CreateBatch>) -> Response {
    let mut state = emulator.lock();
    if !state.files.contains_key(&input.input_file_id) {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_file",
            "input file not found",
        );
    }
    let id = state.id("batch");
    let batch = Batch {
        id: id.clone(),
        endpoint: input.endpoint,
        input_file_id: input.input_file_id,
        completion_window: input.completion_window,
        metadata: input.metadata,
        created_at: now(),
        status: "validating",
        polls: 0,
        output_file_id: None,
        error_file_id: None,
        counts: (0, 0, 0),
        errors: None,
    };
    let body = batch.to_json();
    state.batches.insert(id, batch);
    Json(body).into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn list(Shared(emulator): Shared<Emulator>, Query(query): Query<ListQuery>) -> Response {
    let state = emulator.lock();
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    // Newest first, like the real API.
    let newest: Vec<&Batch> = state.batches.values().rev().collect();
    let start = query
        .after
        .and_then(|after| newest.iter().position(|b| b.id == after).map(|i| i + 1))
        .unwrap_or(0);
    let page: Vec<Value> = newest
        .iter()
        .skip(start)
        .take(limit)
        .map(|b| b.to_json())
        .collect();
    let has_more = newest.len() > start + page.len();
    Json(
        json!({ "object": "list", "data": page, "has_more": has_more,
                 "first_id": page.first().map(|b| b["id"].clone()),
                 "last_id": page.last().map(|b| b["id"].clone()) }),
    )
    .into_response()
}

async fn retrieve(Shared(emulator): Shared<Emulator>, Path(id): Path<String>) -> Response {
    let mut state = emulator.lock();
    state.advance(&id, &emulator.faults, now());
    match state.batches.get(&id) {
        Some(batch) => Json(batch.to_json()).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such batch"),
    }
}

async fn cancel(Shared(emulator): Shared<Emulator>, Path(id): Path<String>) -> Response {
    let mut state = emulator.lock();
    let Some(batch) = state.batches.get_mut(&id) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such batch");
    };
    if matches!(batch.status, "validating" | "in_progress" | "finalizing") {
        batch.status = "cancelling";
        batch.polls = 0;
    } else if batch.status != "cancelling" {
        let message = format!("cannot cancel a batch that is {}", batch.status);
        return error(StatusCode::CONFLICT, "invalid_state", &message);
    }
    Json(batch.to_json()).into_response()
}
