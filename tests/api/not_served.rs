//! A request for an endpoint no configured provider serves is refused at submission with
//! `NOT_SERVED`, whole, and nothing is written; with no provider at all, requests wait.

use serde_json::{json, Value};

use crate::delivery::app_with_provider;
use crate::support::{error_code, TestApp, TestDb};

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId } }";

fn request(custom_id: &str, endpoint: &str) -> Value {
    json!({ "customId": custom_id, "endpoint": endpoint, "model": "m",
            "body": { "messages": [] }, "delivery": { "poll": true } })
}

async fn listed(app: &TestApp) -> usize {
    let listed = app
        .graphql("{ requests { edges { node { id } } } }", json!({}))
        .await;
    listed["data"]["requests"]["edges"]
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test]
async fn a_request_no_configured_provider_serves_is_refused_whole_and_writes_nothing() {
    let db = TestDb::new().await;
    // The OpenAI-compatible provider only: no Anthropic URL.
    let app = app_with_provider(&db, |_| {}).await;
    let mixed = json!({ "requests": [
        request("chat", "/v1/chat/completions"),
        request("claude", "/v1/messages"),
    ] });
    let refused = app.graphql(SUBMIT_MANY, mixed).await;
    assert_eq!(error_code(&refused), "NOT_SERVED", "{refused}");
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/v1/messages") && message.contains("/v1/chat/completions"),
        "the refusal names what is missing and what is served: {message}"
    );
    assert_eq!(listed(&app).await, 0, "nothing was written");

    let served = json!({ "requests": [request("chat", "/v1/chat/completions")] });
    let accepted = app.graphql(SUBMIT_MANY, served).await;
    assert!(accepted["errors"].is_null(), "{accepted}");
    assert_eq!(listed(&app).await, 1);
    app.stop().await;
}

#[tokio::test]
async fn with_no_provider_configured_every_endpoint_is_accepted_and_waits() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "no-provider").await;
    let both = json!({ "requests": [
        request("chat", "/v1/chat/completions"),
        request("claude", "/v1/messages"),
    ] });
    let accepted = app.graphql(SUBMIT_MANY, both).await;
    assert!(accepted["errors"].is_null(), "{accepted}");
    assert_eq!(listed(&app).await, 2);
    app.stop().await;
}
