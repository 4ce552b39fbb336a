//! Simulations over GraphQL with the emulator playing the patient: full sessions, every AI
//! call audited, outages, duplicates, concurrency, time limits and live messages.

use std::time::Duration;

use chronicle::provider::{Emulator, Faults};
use chronicle_aggregates::simulation::{
    AiCallRecord, AiOutput, AiService, Simulation, SimulationCommand, TokenUsage,
};
use chrono::Utc;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{app_context, eventually, spawn_emulator, Subscription, TestApp, TestDb};

const CREATE: &str = "mutation($input: CreateSimulationInput!) {
    createSimulation(input: $input) { aggregateId version } }";
const POST: &str = "mutation($id: UUID!, $text: String!) {
    postMessage(simulationId: $id, text: $text) { version } }";
const SIMULATION: &str = "query($id: UUID!) { simulation(id: $id) {
    status messageCount tokensUsed pendingService feedback
    messages { seq role text callId }
    aiCalls { callId service model status request responseText output promptTokens
              completionTokens finishReason latencyMs attempts error } } }";

fn input(time_limit_seconds: Option<i32>) -> Value {
    json!({
        "learnerId": "learner-1",
        "scenario": { "diagnosis": "appendicitis", "chiefComplaint": "abdominal pain",
                      "difficulty": "MEDIUM" },
        "patient": { "name": "Alex Doe", "age": 34, "sex": "female", "history": "none" },
        "ai": { "model": "gpt-4o-mini", "temperature": 0.7 },
        "timeLimitSeconds": time_limit_seconds,
    })
}

async fn app(db: &TestDb) -> (Emulator, TestApp) {
    let (emulator, url) = spawn_emulator(Faults::default()).await;
    let app = TestApp::spawn_configured(db, "simulations", |c| c.provider_url = Some(url)).await;
    (emulator, app)
}

async fn create(app: &TestApp, time_limit_seconds: Option<i32>) -> String {
    let response = app
        .graphql(CREATE, json!({ "input": input(time_limit_seconds) }))
        .await;
    response["data"]["createSimulation"]["aggregateId"]
        .as_str()
        .unwrap_or_else(|| panic!("created: {response}"))
        .to_owned()
}

/// The simulation once `check` holds for it.
async fn when(app: &TestApp, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(Duration::from_secs(30), what, || async {
        let response = app.graphql(SIMULATION, json!({ "id": id })).await;
        let simulation = response["data"]["simulation"].clone();
        check(&simulation).then_some(simulation)
    })
    .await
}

async fn messages(app: &TestApp, id: &str, count: usize) -> Value {
    when(app, id, &format!("{count} messages"), |s| {
        s["messages"].as_array().map(Vec::len) == Some(count) && s["pendingService"].is_null()
    })
    .await
}

/// Posts `text` and waits for the patient's reply.
async fn exchange(app: &TestApp, id: &str, text: &str, count_after: usize) {
    let response = app.graphql(POST, json!({ "id": id, "text": text })).await;
    assert!(response["errors"].is_null(), "{response}");
    messages(app, id, count_after).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_session_is_recorded_with_every_ai_call_audited() {
    let db = TestDb::new().await;
    let (_emulator, app) = app(&db).await;
    let id = create(&app, None).await;
    let opening = messages(&app, &id, 1).await;
    assert_eq!(opening["status"], "in_progress");
    assert_eq!(opening["messages"][0]["role"], "patient");
    for turn in 1..=5 {
        exchange(&app, &id, &format!("question {turn}"), 1 + 2 * turn).await;
    }
    let end = "mutation($id: UUID!) { endSimulation(simulationId: $id) { version } }";
    assert!(app.graphql(end, json!({ "id": id })).await["errors"].is_null());
    let done = when(&app, &id, "feedback", |s| s["status"] == "feedback_ready").await;

    let seqs: Vec<i64> = done["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>(), "gap-free and ordered");
    let roles: Vec<&str> = done["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles[0], "patient");
    assert!(roles[1..]
        .chunks(2)
        .all(|pair| pair == ["learner", "patient"]));
    assert_eq!(
        done["messages"][4]["text"],
        "[emulated] You said: question 2"
    );

    let calls = done["aiCalls"].as_array().expect("calls");
    let services: Vec<&str> = calls
        .iter()
        .map(|c| c["service"].as_str().expect("service"))
        .collect();
    assert_eq!(services[0], "patient.initial");
    assert_eq!(services[1..6], ["patient.reply"; 5]);
    assert_eq!(services[6], "feedback.hotwash");
    let mut tokens = 0;
    for call in calls {
        assert_eq!(call["status"], "completed", "{call}");
        assert_eq!(call["model"], "gpt-4o-mini");
        assert_eq!(call["finishReason"], "stop");
        assert_eq!(call["attempts"], 1);
        assert!(call["request"]["messages"][0]["content"]
            .as_str()
            .is_some_and(|s| s.starts_with("## Scenario")));
        assert!(call["output"].is_object());
        tokens += call["promptTokens"].as_i64().expect("tokens")
            + call["completionTokens"].as_i64().expect("tokens");
    }
    assert_eq!(done["tokensUsed"], tokens);
    // Each patient message names the call that produced it.
    assert_eq!(done["messages"][2]["callId"], calls[1]["callId"]);
    assert_eq!(done["feedback"]["scores"][0]["item"], "history taking");
    // The last reply's request carried the whole conversation before it, in order.
    let last_reply = calls[5]["request"]["messages"].as_array().expect("sent");
    assert_eq!(
        last_reply.len(),
        1 + 10,
        "system, then the ten messages so far"
    );
    assert_eq!(last_reply[10]["content"], "question 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outage_fails_the_session_and_retry_ai_call_recovers_it() {
    let db = TestDb::new().await;
    let (emulator, app) = app(&db).await;
    let id = create(&app, None).await;
    messages(&app, &id, 1).await;
    emulator.set_down(true);
    let response = app
        .graphql(POST, json!({ "id": id, "text": "hello?" }))
        .await;
    assert!(response["errors"].is_null(), "{response}");
    let failed = when(&app, &id, "failed", |s| s["status"] == "failed").await;
    let call = &failed["aiCalls"][1];
    assert_eq!(call["status"], "failed");
    assert_eq!(
        call["attempts"], 3,
        "first attempt and the configured 2 retries"
    );
    assert!(
        call["error"].as_str().is_some_and(|e| e.contains("503")),
        "{call}"
    );

    let refused = app
        .graphql(POST, json!({ "id": id, "text": "again" }))
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"],
        "INVALID_TRANSITION"
    );
    emulator.set_down(false);
    let retry = "mutation($id: UUID!) { retryAiCall(simulationId: $id) { version } }";
    assert!(app.graphql(retry, json!({ "id": id })).await["errors"].is_null());
    let recovered = messages(&app, &id, 3).await;
    assert_eq!(recovered["status"], "in_progress");
    assert_eq!(recovered["aiCalls"][2]["status"], "completed");
    assert_eq!(
        recovered["messages"][2]["text"],
        "[emulated] You said: hello?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicated_ai_answer_is_persisted_once() {
    let db = TestDb::new().await;
    let (_emulator, app) = app(&db).await;
    let id = create(&app, None).await;
    let opening = messages(&app, &id, 1).await;
    let call_id: Uuid = opening["aiCalls"][0]["callId"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("call id");
    let duplicate = SimulationCommand::RecordAiResult {
        call: AiCallRecord {
            call_id,
            service: AiService::PatientInitial,
            model: "gpt-4o-mini".into(),
            request: json!({}),
            response_text: "{}".into(),
            output: json!({ "reply": "again", "emotion": "calm" }),
            schema: "patient_reply".into(),
            usage: TokenUsage::default(),
            finish_reason: "stop".into(),
            latency_ms: 1,
            attempts: 1,
        },
        output: AiOutput::PatientLine("again".into()),
        at: Utc::now(),
    };
    let before = app.commands.load::<Simulation>(&id).await.expect("load");
    let receipt = app
        .commands
        .execute::<Simulation>(&app_context(), &id, duplicate, &(), None)
        .await
        .expect("a duplicate is accepted as a no-op");
    let after = app.commands.load::<Simulation>(&id).await.expect("load");
    assert_eq!(before.messages(), after.messages());
    assert_eq!(receipt.events, 0, "{receipt:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_simulations_run_at_once() {
    let db = TestDb::new().await;
    let (_emulator, app) = app(&db).await;
    let ids: Vec<String> = futures::future::join_all((0..20).map(|_| create(&app, None))).await;
    futures::future::join_all(ids.iter().map(|id| async {
        messages(&app, id, 1).await;
        exchange(&app, id, "first", 3).await;
        exchange(&app, id, "second", 5).await;
    }))
    .await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM simulation_messages")
        .fetch_one(&app.pool)
        .await
        .expect("count");
    assert_eq!(total, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_learner_waits_for_the_reply_and_bad_input_changes_nothing() {
    let db = TestDb::new().await;
    // The patient takes a while to open: the learner's first message comes too early.
    let (_emulator, url) = spawn_emulator(Faults {
        latency_ms: 3_000,
        ..Faults::default()
    })
    .await;
    let app = TestApp::spawn_configured(&db, "slow patient", |c| c.provider_url = Some(url)).await;
    let id = create(&app, None).await;
    let early = app.graphql(POST, json!({ "id": id, "text": "hi" })).await;
    assert_eq!(
        early["errors"][0]["extensions"]["code"], "CONFLICT",
        "{early}"
    );

    let mut bad = input(Some(0));
    bad["patient"]["age"] = json!(-3);
    bad["learnerId"] = json!("");
    let response = app.graphql(CREATE, json!({ "input": bad })).await;
    assert_eq!(response["errors"][0]["extensions"]["code"], "VALIDATION");
    let message = response["errors"][0]["message"].as_str().expect("message");
    assert!(
        message.contains("age") && message.contains("learner id") && message.contains("time limit"),
        "{message}"
    );
    let created: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SimulationCreated'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(created, 1, "the invalid one wrote nothing");
    let missing = app
        .graphql(POST, json!({ "id": Uuid::new_v4(), "text": "hi" }))
        .await;
    assert_eq!(missing["errors"][0]["extensions"]["code"], "NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_time_limit_ends_the_session_and_feedback_follows() {
    let db = TestDb::new().await;
    let (_emulator, app) = app(&db).await;
    let id = create(&app, Some(1)).await;
    let done = when(&app, &id, "feedback after the time limit", |s| {
        s["status"] == "feedback_ready"
    })
    .await;
    assert_eq!(done["aiCalls"][1]["service"], "feedback.hotwash");
    let late = app
        .graphql(POST, json!({ "id": id, "text": "still there?" }))
        .await;
    assert_eq!(
        late["errors"][0]["extensions"]["code"],
        "INVALID_TRANSITION"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_stream_to_a_subscriber_as_they_are_recorded() {
    let db = TestDb::new().await;
    let (_emulator, app) = app(&db).await;
    let id = create(&app, None).await;
    let query = "subscription($id: UUID!) { simulationMessages(id: $id) {
        cursor message { seq role text } } }";
    let mut subscription = Subscription::start(&app.ws_url(), query, json!({ "id": id })).await;
    let first = subscription
        .next_data(Duration::from_secs(15))
        .await
        .expect("opening line");
    assert_eq!(first["simulationMessages"]["message"]["seq"], 1);
    exchange(&app, &id, "how are you?", 3).await;
    for seq in [2, 3] {
        let next = subscription
            .next_data(Duration::from_secs(15))
            .await
            .expect("message");
        assert_eq!(next["simulationMessages"]["message"]["seq"], seq);
    }
    subscription.close().await;
}
