//! The OpenAI client against the provider emulator: the real API shapes, status progression,
//! results files, crash-recovery lookup, and faults.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chronicle::provider::{
    BatchInput, Emulator, Faults, OpenAi, OpenAiConfig, Provider, ProviderBatch, ProviderError,
    ProviderStatus,
};
use chronicle_aggregates::Endpoint;
use futures::TryStreamExt;
use serde_json::json;
use uuid::Uuid;

use crate::support::spawn_emulator;

async fn spawn(faults: Faults) -> (Emulator, OpenAi) {
    let (emulator, base_url) = spawn_emulator(faults).await;
    let client = OpenAi::new(OpenAiConfig {
        base_url,
        api_key: "test-key".to_owned().into(),
        organization: Some("org-test".into()),
        project: None,
        timeout: Duration::from_secs(5),
        max_retries: 8,
        azure_api_version: None,
    })
    .expect("client");
    (emulator, client)
}

fn input(lines: usize) -> Bytes {
    let mut jsonl = String::new();
    for i in 0..lines {
        let body = if i % 10 == 3 {
            json!({ "model": "m", "emulator_error": true, "messages": [] })
        } else {
            json!({ "model": "m", "messages": [{ "role": "user", "content": format!("hi {i}") }] })
        };
        let line = json!({ "custom_id": format!("r{i}"), "method": "POST",
                           "url": "/v1/chat/completions", "body": body });
        jsonl.push_str(&format!("{line}\n"));
    }
    Bytes::from(jsonl)
}

async fn poll_until_settled(client: &dyn Provider, id: &str) -> ProviderBatch {
    for _ in 0..100 {
        let batch = client.batch(id).await.expect("poll");
        if !matches!(
            batch.status,
            ProviderStatus::Validating
                | ProviderStatus::InProgress
                | ProviderStatus::Finalizing
                | ProviderStatus::Cancelling
        ) {
            return batch;
        }
    }
    panic!("batch {id} never settled");
}

/// Uploads `count` requests, creates a batch over them and polls it until it settles.
async fn run_batch(client: &OpenAi, count: usize) -> ProviderBatch {
    let file = client.upload(input(count)).await.expect("upload");
    let batch = client
        .create_batch(
            BatchInput::File(&file),
            Endpoint::ChatCompletions,
            Uuid::now_v7(),
        )
        .await
        .expect("create");
    poll_until_settled(client, &batch.id).await
}

async fn lines(client: &OpenAi, file: Option<&String>) -> Vec<chronicle::provider::ResultLine> {
    match file {
        Some(file) => client
            .results(file)
            .await
            .expect("download")
            .try_collect()
            .await
            .expect("lines"),
        None => Vec::new(),
    }
}

#[tokio::test]
async fn a_thousand_requests_go_through_and_every_result_matches_its_request() {
    let (emulator, client) = spawn(Faults::default()).await;
    let file = client.upload(input(1000)).await.expect("upload");
    let ours = Uuid::now_v7();
    let created = client
        .create_batch(BatchInput::File(&file), Endpoint::ChatCompletions, ours)
        .await
        .expect("create");
    assert_eq!(created.status, ProviderStatus::Validating);
    let done = poll_until_settled(&client, &created.id).await;
    assert_eq!(done.status, ProviderStatus::Completed);
    assert_eq!(
        (
            done.request_counts.total,
            done.request_counts.completed,
            done.request_counts.failed
        ),
        (1000, 900, 100)
    );

    let mut seen: HashMap<String, bool> = HashMap::new();
    for line in lines(&client, done.output_file_id.as_ref()).await {
        let response = line.response.expect("response");
        assert_eq!(response.status_code, 200);
        let content = response.body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        assert!(content.starts_with("[emulated] hi "), "{content}");
        assert!(
            seen.insert(line.custom_id, true).is_none(),
            "a custom id twice"
        );
    }
    for line in lines(&client, done.error_file_id.as_ref()).await {
        assert!(line.error.is_some());
        assert!(
            seen.insert(line.custom_id, false).is_none(),
            "a custom id twice"
        );
    }
    assert_eq!(seen.len(), 1000);
    assert_eq!(seen.values().filter(|ok| !**ok).count(), 100);

    let found = client.find_batch(ours).await.expect("find");
    assert_eq!(found.map(|b| b.id), Some(created.id));
    assert_eq!(client.find_batch(Uuid::now_v7()).await.expect("find"), None);
    assert_eq!(emulator.batch_count(), 1);
}

#[tokio::test]
async fn rate_limits_and_outages_are_retried_until_the_call_succeeds() {
    let faults = Faults {
        rate_limit_every: 3,
        unavailable_every: 7,
        ..Faults::default()
    };
    let (emulator, client) = spawn(faults).await;
    let file = client
        .upload(input(20))
        .await
        .expect("upload through 429s and 503s");
    // Creating is not retried by the client (a timed-out create may have succeeded): like
    // the driver, look for the batch first and create only when there is none.
    let ours = Uuid::now_v7();
    let mut created = None;
    for _ in 0..20 {
        if let Some(found) = client.find_batch(ours).await.expect("find through faults") {
            created = Some(found);
            break;
        }
        if let Ok(batch) = client
            .create_batch(BatchInput::File(&file), Endpoint::ChatCompletions, ours)
            .await
        {
            created = Some(batch);
            break;
        }
    }
    let created = created.expect("created within twenty rounds");
    let done = poll_until_settled(&client, &created.id).await;
    assert_eq!(done.status, ProviderStatus::Completed);
    assert_eq!(lines(&client, done.output_file_id.as_ref()).await.len(), 18);
    assert_eq!(emulator.batch_count(), 1, "a second batch was created");
}

#[tokio::test]
async fn validation_errors_are_final_and_carry_the_providers_message() {
    let (_emulator, client) = spawn(Faults::default()).await;
    let refused = client
        .create_batch(
            BatchInput::File("file-does-not-exist"),
            Endpoint::Embeddings,
            Uuid::now_v7(),
        )
        .await;
    assert_eq!(
        refused,
        Err(ProviderError::Rejected {
            status: 400,
            message: "input file not found".into()
        })
    );
}

#[tokio::test]
async fn failed_expired_and_cancelled_batches_report_the_right_status() {
    let (_emulator, failing) = spawn(Faults {
        fail_batches: Some("[emulated] bad input".into()),
        ..Faults::default()
    })
    .await;
    let failed = run_batch(&failing, 4).await;
    assert_eq!(failed.status, ProviderStatus::Failed);
    assert!(failed
        .errors
        .is_some_and(|e| e.to_string().contains("bad input")));

    let (_emulator, expiring) = spawn(Faults {
        expire_batches: true,
        ..Faults::default()
    })
    .await;
    let expired = run_batch(&expiring, 10).await;
    assert_eq!(expired.status, ProviderStatus::Expired);
    let partial = lines(&expiring, expired.output_file_id.as_ref())
        .await
        .len()
        + lines(&expiring, expired.error_file_id.as_ref()).await.len();
    assert_eq!(partial, 5, "half of the requests got results before expiry");

    let (_emulator, cancelling) = spawn(Faults {
        polls_per_status: 3,
        ..Faults::default()
    })
    .await;
    let file = cancelling.upload(input(4)).await.expect("upload");
    let batch = cancelling
        .create_batch(
            BatchInput::File(&file),
            Endpoint::ChatCompletions,
            Uuid::now_v7(),
        )
        .await
        .expect("create");
    let asked = cancelling.cancel(&batch.id).await.expect("cancel");
    assert_eq!(asked.status, ProviderStatus::Cancelling);
    let cancelled = poll_until_settled(&cancelling, &batch.id).await;
    assert_eq!(cancelled.status, ProviderStatus::Cancelled);
}

#[tokio::test]
async fn anthropic_message_batches_expire_and_cancel_like_the_real_api() {
    use chronicle::provider::{Anthropic, AnthropicConfig};

    let client = |url: String| {
        Anthropic::new(AnthropicConfig {
            base_url: url,
            api_key: "test-key".to_owned().into(),
            timeout: Duration::from_secs(5),
            max_retries: 3,
        })
        .expect("client")
    };
    let (_emulator, url) = spawn_emulator(Faults {
        expire_batches: true,
        ..Faults::default()
    })
    .await;
    let expiring = client(url);
    let created = expiring
        .create_batch(
            BatchInput::Inline(input(6)),
            Endpoint::Messages,
            Uuid::now_v7(),
        )
        .await
        .expect("create");
    let ended = poll_until_settled(&expiring, &created.id).await;
    assert_eq!(ended.status, ProviderStatus::Expired);
    let answered: Vec<_> = expiring
        .results(ended.output_file_id.as_deref().expect("results url"))
        .await
        .expect("results")
        .try_collect()
        .await
        .expect("lines");
    let with_outcome = answered
        .iter()
        .filter(|l| l.response.is_some() || l.error.is_some())
        .count();
    assert_eq!((answered.len(), with_outcome), (6, 3));

    let (_emulator, url) = spawn_emulator(Faults {
        polls_per_status: 5,
        ..Faults::default()
    })
    .await;
    let cancelling = client(url);
    let created = cancelling
        .create_batch(
            BatchInput::Inline(input(3)),
            Endpoint::Messages,
            Uuid::now_v7(),
        )
        .await
        .expect("create");
    assert_eq!(
        cancelling.cancel(&created.id).await.expect("cancel").status,
        ProviderStatus::Cancelling
    );
    let cancelled = poll_until_settled(&cancelling, &created.id).await;
    assert_eq!(cancelled.status, ProviderStatus::Cancelled);
}
