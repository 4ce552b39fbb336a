//! The provider driver against the emulator: batches go from building through
//! ready_to_deliver (to delivering: these requests are polled by their owner) with every
//! request matched, and failures and expiry end in the right states.

use std::time::Duration;

use chronicle::provider::Faults;
use serde_json::{json, Value};

use crate::support::{eventually, spawn_emulator, TestApp, TestDb};

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId batchId } }";

fn items(count: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let mut body = json!({ "model": "m", "messages": [{ "role": "user", "content": format!("q{i}") }] });
            if i % 10 == 3 {
                body["emulator_error"] = json!(true);
            }
            json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                    "model": "m", "body": body, "delivery": { "poll": true } })
        })
        .collect()
}

/// An emulator with `faults`, and an app whose provider driver talks to it.
async fn with_driver(db: &TestDb, faults: Faults) -> (chronicle::provider::Emulator, TestApp) {
    let (emulator, url) = spawn_emulator(faults).await;
    let app = TestApp::spawn_configured(db, "driver", |c| c.provider_url = Some(url)).await;
    (emulator, app)
}

/// Submits `count` requests, flushes their batch and waits for the batch to reach `status`.
async fn run(app: &TestApp, count: usize, status: &str) -> String {
    let response = app
        .graphql(SUBMIT_MANY, json!({ "requests": items(count) }))
        .await;
    let batch_id = response["data"]["submitRequests"][0]["batchId"]
        .as_str()
        .expect("batch id")
        .to_owned();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch_id })).await;
    let query = "query($id: UUID!) { batch(id: $id) { status } }";
    eventually(Duration::from_secs(60), status, || async {
        let response = app.graphql(query, json!({ "id": batch_id })).await;
        (response["data"]["batch"]["status"] == status).then_some(())
    })
    .await;
    batch_id
}

/// Request statuses of the batch once the read model shows `total` of them settled.
async fn request_statuses(app: &TestApp, total: i64) -> Vec<(String, i64)> {
    eventually(Duration::from_secs(30), "request statuses", || async {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM requests GROUP BY status ORDER BY status")
                .fetch_all(&app.pool)
                .await
                .ok()?;
        let settled: i64 = rows
            .iter()
            .filter(|(s, _)| s != "pending" && s != "provider_processing")
            .map(|(_, n)| n)
            .sum();
        (settled == total).then_some(rows)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_requests_are_each_matched_to_its_result() {
    let db = TestDb::new().await;
    let (emulator, app) = with_driver(&db, Faults::default()).await;
    let batch_id = run(&app, 1000, "delivering").await;

    let statuses = request_statuses(&app, 1000).await;
    assert_eq!(
        statuses,
        [
            ("failed".to_owned(), 100),
            ("provider_processed".to_owned(), 900)
        ]
    );
    let mismatched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM requests WHERE status = 'provider_processed'
            AND response -> 'choices' -> 0 -> 'message' ->> 'content'
                <> '[emulated] ' || (body -> 'messages' -> 0 ->> 'content')",
    )
    .fetch_one(&app.pool)
    .await
    .expect("match");
    assert_eq!(mismatched, 0, "a result reached the wrong request");
    assert_eq!(emulator.batch_count(), 1);

    let query = "query($id: UUID!) { transitions(aggregateId: $id) { toState } }";
    let trail = eventually(Duration::from_secs(15), "the audit trail", || async {
        let response = app.graphql(query, json!({ "id": batch_id })).await;
        let states: Vec<String> = response["data"]["transitions"]
            .as_array()?
            .iter()
            .filter_map(|t| t["toState"].as_str().map(str::to_owned))
            .collect();
        (states.last().map(String::as_str) == Some("delivering")).then_some(states)
    })
    .await;
    assert_eq!(
        trail,
        [
            "building",
            "uploading",
            "uploaded",
            "provider_processing",
            "provider_completed",
            "downloading",
            "ready_to_deliver",
            "delivering"
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn a_batch_the_provider_rejects_fails_with_all_its_requests() {
    let db = TestDb::new().await;
    let faults = Faults {
        fail_batches: Some("[emulated] invalid input".into()),
        ..Faults::default()
    };
    let (_emulator, app) = with_driver(&db, faults).await;
    run(&app, 10, "failed").await;
    assert_eq!(
        request_statuses(&app, 10).await,
        [("failed".to_owned(), 10)]
    );
    app.stop().await;
}

#[tokio::test]
async fn an_expired_batch_delivers_what_finished_and_expires_the_rest() {
    let db = TestDb::new().await;
    let faults = Faults {
        expire_batches: true,
        ..Faults::default()
    };
    let (_emulator, app) = with_driver(&db, faults).await;
    run(&app, 20, "delivering").await;
    // Every second request (r0, r2, ...) finished in time; the others expire.
    assert_eq!(
        request_statuses(&app, 20).await,
        [
            ("expired".to_owned(), 10),
            ("provider_processed".to_owned(), 10)
        ]
    );
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_and_outages_during_upload_poll_and_download_lose_nothing() {
    let db = TestDb::new().await;
    let faults = Faults {
        rate_limit_every: 3,
        unavailable_every: 5,
        ..Faults::default()
    };
    let (emulator, app) = with_driver(&db, faults).await;
    run(&app, 100, "delivering").await;
    assert_eq!(
        request_statuses(&app, 100).await,
        [
            ("failed".to_owned(), 10),
            ("provider_processed".to_owned(), 90)
        ]
    );
    assert_eq!(emulator.batch_count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_owner_cancel_in_flight_reaches_the_provider_once() {
    let db = TestDb::new().await;
    let faults = Faults {
        polls_per_status: 1_000_000,
        ..Faults::default()
    };
    let (emulator, app) = with_driver(&db, faults).await;
    let batch_id = run(&app, 5, "provider_processing").await;
    let cancel = "mutation($id: UUID!) { cancelBatch(batchId: $id) { version } }";
    let cancelled = app.graphql(cancel, json!({ "id": batch_id })).await;
    assert!(cancelled["errors"].is_null(), "{cancelled}");
    eventually(Duration::from_secs(30), "the provider cancel", || async {
        (emulator.statuses() == ["cancelling"]).then_some(())
    })
    .await;
    // Requests already at the provider fail; any not yet sent are cancelled.
    let settled = request_statuses(&app, 5).await;
    assert!(
        settled
            .iter()
            .all(|(s, _)| s == "failed" || s == "cancelled"),
        "{settled:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_restart_after_the_provider_batch_was_created_adopts_it_instead_of_creating_another() {
    use chronicle::command::CommandContext;
    use chronicle::provider::{BatchInput, Provider};
    use chronicle_aggregates::batch::{Batch, BatchCommand};
    use chronicle_aggregates::Endpoint;

    let db = TestDb::new().await;
    let (emulator, url) = spawn_emulator(Faults::default()).await;
    // First life, without a driver: the batch closes; then, as the driver would, the input
    // is uploaded and recorded, and the provider batch created — but the process dies before
    // recording it.
    let (first, batch_id, provider) = first_life(&db, &url).await;
    let file = provider
        .upload(bytes::Bytes::from_static(b"{\"custom_id\":\"r0\"}\n"))
        .await
        .expect("upload");
    let context = CommandContext {
        actor: "system".into(),
        correlation_id: "crash".into(),
        causation_id: None,
    };
    let uploaded = BatchCommand::MarkUploaded {
        input_file_id: file.clone(),
        at: chrono::Utc::now(),
    };
    first
        .commands
        .execute::<Batch>(&context, &batch_id.to_string(), uploaded, &(), None)
        .await
        .expect("uploaded");
    provider
        .create_batch(BatchInput::File(&file), Endpoint::ChatCompletions, batch_id)
        .await
        .expect("created before the crash");
    first.stop().await;

    let second =
        TestApp::spawn_configured(&db, "second-life", |c| c.provider_url = Some(url)).await;
    let query = "query($id: UUID!) { batch(id: $id) { status providerBatchId } }";
    eventually(
        Duration::from_secs(60),
        "the adopted batch to finish",
        || async {
            let response = second.graphql(query, json!({ "id": batch_id })).await;
            (response["data"]["batch"]["status"] == "delivering").then_some(())
        },
    )
    .await;
    assert_eq!(
        emulator.batch_count(),
        1,
        "a second provider batch was created"
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_batches_are_driven_at_once() {
    let db = TestDb::new().await;
    let (emulator, app) = with_driver(&db, Faults::default()).await;
    let requests: Vec<Value> = (0..30)
        .map(|i| {
            let model = format!("m{}", i % 3);
            json!({ "customId": format!("r{i}"), "endpoint": "/v1/chat/completions",
                    "model": model, "body": { "messages": [] }, "delivery": { "poll": true } })
        })
        .collect();
    let response = app
        .graphql(SUBMIT_MANY, json!({ "requests": requests }))
        .await;
    let mut batches: Vec<String> = response["data"]["submitRequests"]
        .as_array()
        .expect("accepted")
        .iter()
        .filter_map(|a| a["batchId"].as_str().map(str::to_owned))
        .collect();
    batches.sort();
    batches.dedup();
    assert_eq!(batches.len(), 3);
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    for batch in &batches {
        app.graphql(flush, json!({ "id": batch })).await;
    }
    eventually(
        Duration::from_secs(60),
        "three finished batches",
        || async {
            let ready: i64 =
                sqlx::query_scalar("SELECT count(*) FROM batches WHERE status = 'delivering'")
                    .fetch_one(&app.pool)
                    .await
                    .ok()?;
            (ready == 3).then_some(())
        },
    )
    .await;
    assert_eq!(emulator.batch_count(), 3);
    assert_eq!(
        request_statuses(&app, 30).await,
        [("provider_processed".to_owned(), 30)]
    );
    app.stop().await;
}

#[tokio::test]
async fn messages_requests_go_to_anthropic_message_batches() {
    let db = TestDb::new().await;
    let (emulator, url) = spawn_emulator(Faults::default()).await;
    let app = TestApp::spawn_configured(&db, "driver", |c| c.anthropic_url = Some(url)).await;
    let requests: Vec<Value> = (0..12)
        .map(|i| {
            let mut params = json!({ "model": "claude-emulated", "max_tokens": 64,
                                     "messages": [{ "role": "user", "content": format!("q{i}") }] });
            if i == 5 {
                params["emulator_error"] = json!(true);
            }
            json!({ "customId": format!("m{i}"), "endpoint": "/v1/messages",
                    "model": "claude-emulated", "body": params, "delivery": { "poll": true } })
        })
        .collect();
    let response = app
        .graphql(SUBMIT_MANY, json!({ "requests": requests }))
        .await;
    let batch_id = response["data"]["submitRequests"][0]["batchId"].clone();
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": batch_id })).await;
    let query = "query($id: UUID!) { batch(id: $id) { status providerBatchId } }";
    let batch = eventually(Duration::from_secs(60), "delivering", || async {
        let response = app.graphql(query, json!({ "id": batch_id })).await;
        (response["data"]["batch"]["status"] == "delivering")
            .then(|| response["data"]["batch"].clone())
    })
    .await;
    assert!(batch["providerBatchId"]
        .as_str()
        .is_some_and(|id| id.starts_with("msgbatch-emu")));
    assert_eq!(
        request_statuses(&app, 12).await,
        [
            ("failed".to_owned(), 1),
            ("provider_processed".to_owned(), 11)
        ]
    );
    let text: String = sqlx::query_scalar(
        "SELECT response -> 'content' -> 0 ->> 'text' FROM requests WHERE custom_id = 'm3'",
    )
    .fetch_one(&app.pool)
    .await
    .expect("m3");
    assert_eq!(text, "[emulated] q3");
    assert_eq!(emulator.batch_count(), 1);
    app.stop().await;
}

#[tokio::test]
async fn azure_openai_gets_its_own_paths_header_and_endpoint_names() {
    let db = TestDb::new().await;
    let (emulator, url) = spawn_emulator(Faults::default()).await;
    // Azure lists every client's batches; one without metadata must not stop ours.
    foreign_batch_without_metadata(&url).await;
    let app = TestApp::spawn_configured(&db, "driver", |c| {
        c.provider_url = Some(url);
        c.provider_azure_api_version = Some("2024-10-21".into());
    })
    .await;
    run(&app, 10, "delivering").await;
    assert_eq!(
        request_statuses(&app, 10).await,
        [
            ("failed".to_owned(), 1),
            ("provider_processed".to_owned(), 9)
        ]
    );
    assert!(
        emulator.azure_calls() >= 2 + 4,
        "after the foreign batch's two calls, upload, create, poll and download go to /openai"
    );
    let uploads: Vec<String> = emulator
        .uploads()
        .into_iter()
        .filter(|upload| !upload.contains("other-client-1"))
        .collect();
    assert_eq!(uploads.len(), 1, "ours, besides the foreign batch's");
    assert!(
        uploads[0]
            .lines()
            .all(|line| line.contains("\"url\":\"/chat/completions\"")),
        "{}",
        uploads[0]
    );
    app.stop().await;
}

#[tokio::test]
async fn downloads_that_break_off_are_resumed_without_losing_or_repeating_results() {
    let db = TestDb::new().await;
    let faults = Faults {
        cut_first_downloads: 2,
        latency_ms: 5,
        ..Faults::default()
    };
    let (_emulator, app) = with_driver(&db, faults).await;
    run(&app, 100, "delivering").await;
    assert_eq!(
        request_statuses(&app, 100).await,
        [
            ("failed".to_owned(), 10),
            ("provider_processed".to_owned(), 90)
        ]
    );
    let repeated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT aggregate_id FROM events
          WHERE event_type = 'RequestResultRecorded' GROUP BY aggregate_id
         HAVING count(*) > 1) twice",
    )
    .fetch_one(&app.pool)
    .await
    .expect("count");
    assert_eq!(repeated, 0, "a result was recorded twice");
    app.stop().await;
}

/// A first life without a driver: 30 requests submitted and their batch closed; returns the
/// app, the batch id and a client of the emulator at `url`.
async fn first_life(db: &TestDb, url: &str) -> (TestApp, uuid::Uuid, chronicle::provider::OpenAi) {
    use chronicle::provider::{OpenAi, OpenAiConfig};

    let first = TestApp::spawn(db, "first-life").await;
    let response = first
        .graphql(SUBMIT_MANY, json!({ "requests": items(30) }))
        .await;
    let batch_id: uuid::Uuid = response["data"]["submitRequests"][0]["batchId"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .expect("batch id");
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    first.graphql(flush, json!({ "id": batch_id })).await;
    let provider = OpenAi::new(OpenAiConfig {
        base_url: url.to_owned(),
        api_key: "key".to_owned().into(),
        organization: None,
        project: None,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        azure_api_version: None,
    })
    .expect("client");
    (first, batch_id, provider)
}

#[tokio::test]
async fn a_restart_after_the_upload_uploads_again_and_creates_one_provider_batch() {
    use chronicle::provider::Provider;

    let db = TestDb::new().await;
    let (emulator, url) = spawn_emulator(Faults::default()).await;
    // The first life uploads the input and dies before recording it.
    let (first, batch_id, provider) = first_life(&db, &url).await;
    provider
        .upload(bytes::Bytes::from_static(b"{\"custom_id\":\"r0\"}\n"))
        .await
        .expect("upload");
    first.stop().await;

    let second =
        TestApp::spawn_configured(&db, "second-life", |c| c.provider_url = Some(url)).await;
    let query = "query($id: UUID!) { batch(id: $id) { status } }";
    eventually(Duration::from_secs(60), "the batch to finish", || async {
        let response = second.graphql(query, json!({ "id": batch_id })).await;
        (response["data"]["batch"]["status"] == "delivering").then_some(())
    })
    .await;
    assert_eq!(emulator.batch_count(), 1);
    assert_eq!(
        emulator.uploads().len(),
        2,
        "the orphan upload and the real one"
    );
    assert_eq!(
        request_statuses(&second, 30).await,
        [
            ("failed".to_owned(), 3),
            ("provider_processed".to_owned(), 27)
        ]
    );
    second.stop().await;
}

#[tokio::test]
async fn an_upload_the_provider_refuses_fails_the_batch_with_its_message() {
    let db = TestDb::new().await;
    let faults = Faults {
        reject_uploads: true,
        ..Faults::default()
    };
    let (_emulator, app) = with_driver(&db, faults).await;
    let batch_id = run(&app, 5, "failed").await;
    assert_eq!(request_statuses(&app, 5).await, [("failed".to_owned(), 5)]);
    let error: serde_json::Value = sqlx::query_scalar(
        "SELECT payload -> 'Failed' -> 'error' FROM events
          WHERE aggregate_id = $1 AND event_type = 'BatchFailed'",
    )
    .bind(&batch_id)
    .fetch_one(&app.pool)
    .await
    .expect("failure event");
    assert_eq!(error["status"], 400);
    assert_eq!(error["message"], "[emulated] the file is invalid");
    app.stop().await;
}

#[tokio::test]
async fn polled_results_wait_until_their_owner_acknowledges_them() {
    let db = TestDb::new().await;
    let (_emulator, app) = with_driver(&db, Faults::default()).await;
    run(&app, 10, "delivering").await;
    let query = "{ unacknowledgedResults(first: 100) { edges { node { id customId response } } } }";
    let results = eventually(Duration::from_secs(15), "nine results", || async {
        let response = app.graphql(query, json!({})).await;
        let edges = response["data"]["unacknowledgedResults"]["edges"]
            .as_array()?
            .clone();
        (edges.len() == 9).then_some(edges)
    })
    .await;
    assert!(results.iter().all(|e| e["node"]["response"].is_object()));
    let first = results[0]["node"]["id"].clone();
    let ack = "mutation($id: UUID!) { acknowledgeResult(requestId: $id) { version } }";
    let acknowledged = app.graphql(ack, json!({ "id": first })).await;
    assert!(acknowledged["errors"].is_null(), "{acknowledged}");
    let again = app.graphql(ack, json!({ "id": first })).await;
    assert_eq!(
        again["errors"][0]["extensions"]["code"],
        "INVALID_TRANSITION"
    );
    eventually(Duration::from_secs(15), "eight left", || async {
        let response = app.graphql(query, json!({})).await;
        let edges = response["data"]["unacknowledgedResults"]["edges"]
            .as_array()?
            .clone();
        (edges.len() == 8).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn a_withdrawn_request_is_left_out_of_the_upload() {
    let db = TestDb::new().await;
    let (emulator, app) = with_driver(&db, Faults::default()).await;
    let response = app
        .graphql(SUBMIT_MANY, json!({ "requests": items(3) }))
        .await;
    let accepted = response["data"]["submitRequests"].clone();
    let cancel = "mutation($id: UUID!) { cancelRequest(requestId: $id) { aggregateType } }";
    let cancelled = app
        .graphql(cancel, json!({ "id": accepted[1]["requestId"] }))
        .await;
    assert_eq!(
        cancelled["data"]["cancelRequest"]["aggregateType"], "Batch",
        "{cancelled}"
    );
    let flush = "mutation($id: UUID!) { flushBatch(batchId: $id) { version } }";
    app.graphql(flush, json!({ "id": accepted[0]["batchId"] }))
        .await;
    eventually(Duration::from_secs(60), "delivering", || async {
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM batches WHERE status = 'delivering'")
                .fetch_one(&app.pool)
                .await
                .ok()?;
        (count == 1).then_some(())
    })
    .await;
    let uploads = emulator.uploads();
    assert_eq!(uploads[0].lines().count(), 2);
    assert!(!uploads[0].contains("\"r1\""), "{}", uploads[0]);
    assert_eq!(
        request_statuses(&app, 3).await,
        [
            ("cancelled".to_owned(), 1),
            ("provider_processed".to_owned(), 2)
        ]
    );
    app.stop().await;
}

/// The one request of another client's batch.
const FOREIGN_LINE: &str = r#"{"custom_id":"other-client-1","method":"POST","url":"/chat/completions","body":{"model":"m","messages":[]}}"#;

/// Puts another client's batch in the emulator at `url` (through its Azure paths), listed
/// with `"metadata": null` as Azure lists batches made without metadata.
pub async fn foreign_batch_without_metadata(url: &str) {
    let http = reqwest::Client::new();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(FOREIGN_LINE.as_bytes().to_vec())
                .file_name("other.jsonl"),
        );
    let file: serde_json::Value = http
        .post(format!("{url}/openai/files?api-version=2024-10-21"))
        .header("api-key", "another-client")
        .multipart(form)
        .send()
        .await
        .expect("upload")
        .json()
        .await
        .expect("file");
    let created = http
        .post(format!("{url}/openai/batches?api-version=2024-10-21"))
        .header("api-key", "another-client")
        .json(&serde_json::json!({
            "input_file_id": file["id"], "endpoint": "/chat/completions",
            "completion_window": "24h", "metadata": null,
        }))
        .send()
        .await
        .expect("create");
    assert!(created.status().is_success(), "{created:?}");
}
