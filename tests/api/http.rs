//! The HTTP surface: liveness, readiness, GraphiQL, and typed errors for bad arguments.

use serde_json::json;

use crate::support::{LedgerCommand, TestApp, TestDb};

#[tokio::test]
async fn health_ready_and_graphiql_answer() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    assert_eq!(app.get("/health").await.status(), 200);
    assert_eq!(app.get("/ready").await.status(), 200);
    let graphiql = app.get("/graphql").await;
    assert_eq!(graphiql.status(), 200);
    assert!(graphiql.text().await.expect("body").contains("graphiql"));
    app.stop().await;
}

#[tokio::test]
async fn ready_turns_red_when_migrations_are_missing() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&db.pool)
        .await
        .expect("forget migrations");
    assert_eq!(app.get("/ready").await.status(), 503);
    app.stop().await;
}

#[tokio::test]
async fn bad_log_arguments_are_validation_errors() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    for (variables, fragment) in [
        (json!({ "after": "c1.nope" }), "not a log cursor"),
        (json!({ "first": 0 }), "between 1 and 1000"),
        (json!({ "first": 1001 }), "between 1 and 1000"),
    ] {
        let response = app
            .graphql(
                "query($after: String, $first: Int) { eventLog(after: $after, first: $first) { edges { cursor } } }",
                variables,
            )
            .await;
        let error = &response["errors"][0];
        assert_eq!(error["extensions"]["code"], "VALIDATION", "{response}");
        assert!(
            error["message"]
                .as_str()
                .is_some_and(|m| m.contains(fragment)),
            "{response}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn the_log_pages_forward_without_gaps_or_repeats() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    app.ledger("l", LedgerCommand::Open).await.expect("open");
    app.ledger("l", LedgerCommand::Deposit(vec![1; 9]))
        .await
        .expect("deposit");
    app.log_edges(
        "{ eventLog(aggregateTypes: [\"Ledger\"]) { edges { cursor } } }",
        10,
    )
    .await;
    let query =
        "query($after: String) { eventLog(after: $after, first: 3, aggregateTypes: [\"Ledger\"]) {
        edges { cursor node { sequence } } pageInfo { hasNextPage } } }";
    let (mut after, mut sequences) = (serde_json::Value::Null, Vec::new());
    loop {
        let response = app.graphql(query, json!({ "after": after })).await;
        let page = &response["data"]["eventLog"];
        for edge in page["edges"].as_array().expect("edges") {
            sequences.push(edge["node"]["sequence"].as_i64().expect("sequence"));
            after = edge["cursor"].clone();
        }
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
    }
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>());
    let other = app
        .graphql(
            "{ eventLog(aggregateTypes: [\"Batch\"]) { edges { cursor } } }",
            json!({}),
        )
        .await;
    assert_eq!(other["data"]["eventLog"]["edges"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn errors_raised_before_resolvers_still_carry_a_code() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    for (query, variables) in [
        ("{ batch(id: \"not-a-uuid\") { id } }", json!({})),
        ("{ nope }", json!({})),
        (
            "query($id: UUID!) { request(id: $id) { id } }",
            json!({ "id": 5 }),
        ),
        (
            "mutation { submitRequest(input: { customId: \"a\", endpoint: \"/v1/embeddings\",
               model: \"m\", body: {}, delivery: { poll: true, webhookUrl: \"https://x.test\" } })
               { requestId } }",
            json!({}),
        ),
    ] {
        let response = app.graphql(query, variables).await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"], "VALIDATION",
            "{response}"
        );
    }
    let deep = format!(
        "{{ __schema {{ types {{ fields {{ type {} name {} }} }} }} }}",
        "{ ofType ".repeat(20),
        "}".repeat(20)
    );
    let response = app.graphql(&deep, json!({})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "VALIDATION",
        "{response}"
    );
    assert!(
        response["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too deep")),
        "{response}"
    );
    app.stop().await;
}

#[tokio::test]
async fn text_the_store_cannot_hold_is_a_validation_error() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "http").await;
    let query = "{ requests(filter: { status: \"a\\u0000b\" }) { edges { cursor } } }";
    let response = app.graphql(query, json!({})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "VALIDATION",
        "{response}"
    );
    let key = "mutation { flushBatch(batchId: \"00000000-0000-7000-8000-000000000000\",
                 idempotencyKey: \"k\\u0000\") { version } }";
    let response = app.graphql(key, json!({})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "VALIDATION",
        "{response}"
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_commands_and_show_projection_lag_and_queues() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "metrics").await;
    app.ledger("m", LedgerCommand::Open).await.expect("open");
    let refused = app.ledger("m", LedgerCommand::Open).await;
    assert!(refused.is_err());
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    for expected in [
        "chronicle_commands_total{instance=\"metrics\",aggregate=\"Ledger\",outcome=\"ok\"} 1",
        "chronicle_commands_total{instance=\"metrics\",aggregate=\"Ledger\",outcome=\"rejected\"} 1",
        "chronicle_events_appended_total{instance=\"metrics\",aggregate=\"Ledger\"} 1",
        "chronicle_command_seconds_bucket{instance=\"metrics\",aggregate=\"Ledger\"",
        "chronicle_projection_lag_events{instance=\"metrics\",projection=\"requests\"}",
        "chronicle_queue_depth{instance=\"metrics\",queue=\"deliveries_due\"} 0",
        "chronicle_log_head_position{instance=\"metrics\"}",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
}
