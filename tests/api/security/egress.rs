//! Targets in refused networks: DICOM servers are refused when registered (after DNS for a
//! name), unless their network is allowed.

use serde_json::json;

use crate::support::{TestApp, TestDb};

const REGISTER: &str = "mutation($url: String!) {
    registerDicomServer(input: { name: \"pacs\", baseUrl: $url }) { version } }";

#[tokio::test]
async fn servers_in_private_networks_are_refused_unless_allowed() {
    let db = TestDb::new().await;
    let strict =
        TestApp::spawn_configured(&db, "egress", |c| c.security.egress_allow = vec![]).await;
    for url in [
        "http://127.0.0.1:8042/dicom-web",
        "http://localhost:8042/dicom-web",
        "http://169.254.169.254/dicom-web",
        "http://[::1]:8042/dicom-web",
        "http://10.0.0.7/dicom-web",
    ] {
        let refused = strict.graphql(REGISTER, json!({ "url": url })).await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "VALIDATION",
            "{url}: {refused}"
        );
        assert!(
            refused["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("CHRONICLE_EGRESS_ALLOW")),
            "{refused}"
        );
    }
    // A webhook to a refused address is refused at submission, and nothing is written.
    let submit = "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId } }";
    let refused = strict
        .graphql(
            submit,
            json!({ "i": { "customId": "w", "endpoint": "/v1/embeddings", "model": "m",
                           "body": { "input": "x" },
                           "delivery": { "webhookUrl": "http://169.254.169.254/hook" } } }),
        )
        .await;
    let error = &refused["errors"][0];
    assert_eq!(error["extensions"]["code"], "VALIDATION", "{refused}");
    assert!(error["extensions"]["items"][0]["reasons"][0]
        .as_str()
        .is_some_and(|r| r.starts_with("webhookUrl")));
    let written: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'Batch'")
            .fetch_one(&strict.pool)
            .await
            .expect("count");
    assert_eq!(written, 0);
    strict.stop().await;
    // The test configuration allows 127.0.0.1/32 only.
    let allowing = TestApp::spawn(&db, "egress").await;
    let allowed = allowing
        .graphql(
            REGISTER,
            json!({ "url": "http://127.0.0.1:8042/dicom-web" }),
        )
        .await;
    assert!(allowed["errors"].is_null(), "{allowed}");
    let neighbour = allowing
        .graphql(
            REGISTER,
            json!({ "url": "http://127.0.0.2:8042/dicom-web" }),
        )
        .await;
    assert_eq!(neighbour["errors"][0]["extensions"]["code"], "VALIDATION");
    allowing.stop().await;
}
