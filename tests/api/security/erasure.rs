//! Crypto-shredding: a learner's personal data is stored sealed, reads back while its key
//! exists, and reads as erased everywhere once the learner is forgotten, while the audit
//! chain still verifies.

use std::time::Duration;

use chronicle::provider::Faults;
use chronicle_projections::LogCursor;
use serde_json::{json, Value};

use crate::analytics::rebuild;
use crate::support::{eventually, spawn_emulator, TestApp, TestDb};

/// Values only this learner's data holds.
const PERSONAL: [&str; 4] = ["learner-zq", "Zebediah Quux", "quuxamine", "Zanzibar"];

const SIMULATION: &str = "query($id: UUID!) { simulation(id: $id) {
    learnerId messages { role text } aiCalls { request responseText } } }";

async fn simulation(app: &TestApp, key: &str, id: &str) -> Value {
    app.graphql_as(key, SIMULATION, json!({ "id": id })).await["data"]["simulation"].clone()
}

fn holds_any(text: &str) -> Vec<&'static str> {
    PERSONAL
        .into_iter()
        .filter(|value| text.contains(value))
        .collect()
}

/// Every place outside the API that could hold personal data, as text.
async fn stored(app: &TestApp) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ',
            (SELECT string_agg(payload::text, ' ') FROM events),
            (SELECT string_agg(payload::text, ' ') FROM snapshots),
            (SELECT string_agg(s::text, ' ') FROM simulations s),
            (SELECT string_agg(m::text, ' ') FROM simulation_messages m),
            (SELECT string_agg(c::text, ' ') FROM ai_calls c),
            (SELECT string_agg(k::text, ' ') FROM subject_keys k),
            (SELECT string_agg(a::text, ' ') FROM aggregate_subjects a))",
    )
    .fetch_all(&app.pool)
    .await
    .expect("dump");
    tables.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forgotten_learner_reads_as_erased_everywhere_and_the_chain_still_verifies() {
    let db = TestDb::new().await;
    let (_emulator, url) = spawn_emulator(Faults::default()).await;
    let app = TestApp::spawn_configured(&db, "erasure", |c| {
        c.provider_url = Some(url);
        c.snapshots = vec![("Simulation".into(), 2)];
    })
    .await;
    let clinic = app.client_key("clinic", "CLIENT").await;
    let created = app
        .graphql_as(
            &clinic,
            "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
            json!({ "i": {
                "learnerId": "learner-zq",
                "scenario": { "diagnosis": "appendicitis", "chiefComplaint": "pain", "difficulty": "EASY" },
                "patient": { "name": "Zebediah Quux", "age": 71, "sex": "male",
                             "history": "allergic to quuxamine" },
                "ai": { "model": "gpt-4o-mini" } } }),
        )
        .await;
    let id = created["data"]["createSimulation"]["aggregateId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    eventually(Duration::from_secs(30), "the opening", || async {
        let s = simulation(&app, &clinic, &id).await;
        (s["messages"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    let posted = app
        .graphql_as(
            &clinic,
            "mutation($id: UUID!) { postMessage(simulationId: $id, text: \"it hurts since Zanzibar\") { version } }",
            json!({ "id": id }),
        )
        .await;
    assert!(posted["errors"].is_null(), "{posted}");
    let before = eventually(Duration::from_secs(30), "the reply", || async {
        let s = simulation(&app, &clinic, &id).await;
        (s["messages"].as_array().map(Vec::len) == Some(3)).then_some(s)
    })
    .await;
    // The owner reads it all back; the events and snapshots hold none of it in the clear.
    assert_eq!(before["learnerId"], "learner-zq");
    assert!(
        holds_any(&before.to_string()).contains(&"Zanzibar"),
        "{before}"
    );
    let raw: String = sqlx::query_scalar(
        "SELECT concat_ws(' ', (SELECT string_agg(payload::text, ' ') FROM events),
                               (SELECT string_agg(payload::text, ' ') FROM snapshots))",
    )
    .fetch_one(&app.pool)
    .await
    .expect("payloads");
    assert_eq!(holds_any(&raw), Vec::<&str>::new(), "sealed at rest");

    let forget = "mutation($s: String!) { forgetSubject(subjectId: $s) { version } }";
    let refused = app
        .graphql_as(&clinic, forget, json!({ "s": "learner:learner-zq" }))
        .await;
    assert_eq!(refused["errors"][0]["extensions"]["code"], "FORBIDDEN");
    let bad = app.graphql(forget, json!({ "s": "learner-zq" })).await;
    assert_eq!(bad["errors"][0]["extensions"]["code"], "VALIDATION");
    let forgotten = app
        .graphql(forget, json!({ "s": "learner:learner-zq" }))
        .await;
    assert!(forgotten["errors"].is_null(), "{forgotten}");
    let again = app
        .graphql(forget, json!({ "s": "learner:learner-zq" }))
        .await;
    assert_eq!(
        again["errors"][0]["extensions"]["code"],
        "INVALID_TRANSITION"
    );

    // At once: the read models are scrubbed, and nothing stored holds the values.
    let after = eventually(Duration::from_secs(15), "the erasure", || async {
        let s = simulation(&app, &clinic, &id).await;
        (s["learnerId"] == "[erased]").then_some(s)
    })
    .await;
    assert_eq!(holds_any(&after.to_string()), Vec::<&str>::new(), "{after}");
    assert_eq!(after["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(holds_any(&stored(&app).await), Vec::<&str>::new());

    // The log, a replay and an export show it erased; the chain verifies.
    for query in [
        "query($id: String!) { aggregateEvents(aggregateType: \"Simulation\", aggregateId: $id) { payload } }",
        "query($id: String!) { aggregateAt(aggregateType: \"Simulation\", aggregateId: $id, version: 5) { state } }",
        "query { eventLog(first: 1000) { edges { node { payload } } } }",
    ] {
        let response = app.graphql(query, json!({ "id": id })).await;
        assert!(response["errors"].is_null(), "{response}");
        assert_eq!(holds_any(&response.to_string()), Vec::<&str>::new(), "{response}");
        assert!(response.to_string().contains("[erased]"), "{response}");
    }
    let mut export = Vec::new();
    chronicle::archive::export(&app.pool, LogCursor::START, None, &mut export, &|_| {})
        .await
        .expect("export");
    assert_eq!(
        holds_any(&String::from_utf8_lossy(&export)),
        Vec::<&str>::new()
    );
    let verified = app
        .graphql("{ verifyAuditChain { intact eventsChecked } }", json!({}))
        .await;
    assert_eq!(
        verified["data"]["verifyAuditChain"]["intact"], true,
        "{verified}"
    );

    // After a rebuild from the log, the read models show the same fields erased.
    app.stop().await;
    rebuild(&db, "simulations").await;
    assert_eq!(holds_any(&stored_tables(&db).await), Vec::<&str>::new());
}

async fn stored_tables(db: &TestDb) -> String {
    sqlx::query_scalar(
        "SELECT concat_ws(' ', (SELECT string_agg(s::text, ' ') FROM simulations s),
                               (SELECT string_agg(m::text, ' ') FROM simulation_messages m),
                               (SELECT string_agg(c::text, ' ') FROM ai_calls c))",
    )
    .fetch_one(&db.pool)
    .await
    .expect("read models")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_patient_reads_as_erased_in_transfer_jobs() {
    use crate::support::dicom_files::PATIENT_ID;
    use crate::transfers::{job_when, setup, site};

    let site = site(&["*"]).await;
    let app = &site.app;
    let pseudonym = "PSEUDO-ZQ-77";
    let created = app
        .graphql(
            "mutation($s: TransferSetupInput!, $t: [TransferTaskInput!]!) {
                createTransferJob(setup: $s, tasks: $t) { aggregateId } }",
            json!({ "s": setup(true),
                    "t": [{ "patientId": PATIENT_ID, "studyInstanceUid": crate::transfers::STUDY_B,
                            "pseudonym": pseudonym }] }),
        )
        .await;
    let id = created["data"]["createTransferJob"]["aggregateId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let job = job_when(app, &id, "success").await;
    let task = "query($id: UUID!) { transferJob(id: $id) { tasks { edges { node { patientId pseudonym } } } } }";
    let before = app.graphql(task, json!({ "id": id })).await;
    assert!(before.to_string().contains(PATIENT_ID), "{before} {job}");
    let raw: String = sqlx::query_scalar(
        "SELECT concat_ws(' ', (SELECT string_agg(payload::text, ' ') FROM events),
                               (SELECT string_agg(payload::text, ' ') FROM snapshots))",
    )
    .fetch_one(&app.pool)
    .await
    .expect("payloads");
    assert!(
        !raw.contains(PATIENT_ID) && !raw.contains(pseudonym),
        "sealed at rest"
    );

    let forgotten = app
        .graphql(
            "mutation($s: String!) { forgetSubject(subjectId: $s) { version } }",
            json!({ "s": format!("patient:{PATIENT_ID}") }),
        )
        .await;
    assert!(forgotten["errors"].is_null(), "{forgotten}");
    let after = eventually(Duration::from_secs(15), "the erasure", || async {
        let response = app.graphql(task, json!({ "id": id })).await;
        (response["data"]["transferJob"]["tasks"]["edges"][0]["node"]["patientId"] == "[erased]")
            .then_some(response)
    })
    .await;
    assert!(!after.to_string().contains(pseudonym), "{after}");
    let replayed = app
        .graphql(
            "query($id: String!) { aggregateAt(aggregateType: \"TransferJob\", aggregateId: $id, version: 1) { state } }",
            json!({ "id": id }),
        )
        .await;
    assert!(!replayed.to_string().contains(PATIENT_ID), "{replayed}");
    assert!(replayed.to_string().contains("[erased]"), "{replayed}");
    let verified = app
        .graphql("{ verifyAuditChain { intact } }", json!({}))
        .await;
    assert_eq!(
        verified["data"]["verifyAuditChain"]["intact"], true,
        "{verified}"
    );
    let tasks: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM transfer_tasks t")
        .fetch_one(&app.pool)
        .await
        .expect("tasks");
    assert!(
        !tasks.contains(PATIENT_ID) && !tasks.contains(pseudonym),
        "{tasks}"
    );
}

/// POSTs a GraphQL call to a server started as a process.
async fn call(http: &reqwest::Client, url: &str, query: &str, variables: Value) -> Value {
    http.post(url)
        .bearer_auth(crate::support::ADMIN_KEY)
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_logs_no_personal_data() {
    let db = TestDb::new().await;
    let (_emulator, provider) = spawn_emulator(Faults::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .arg("serve")
        .env("DATABASE_URL", db.url())
        .env("CHRONICLE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CHRONICLE_BOOTSTRAP_ADMIN_KEY", crate::support::ADMIN_KEY)
        .env("CHRONICLE_KEY_PEPPER", "test pepper")
        .env("CHRONICLE_PROVIDER_URL", provider)
        .env("CHRONICLE_SIMULATION_POLL_MS", "50")
        .env("RUST_LOG", "info,chronicle=debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start chronicle serve");
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/graphql");
    eventually(Duration::from_secs(60), "the server", || async {
        let health = http
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await;
        health.ok().filter(|r| r.status().is_success()).map(drop)
    })
    .await;
    let created = call(
        &http,
        &url,
        "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
        json!({ "i": {
            "learnerId": "learner-zq",
            "scenario": { "diagnosis": "appendicitis", "chiefComplaint": "pain", "difficulty": "EASY" },
            "patient": { "name": "Zebediah Quux", "age": 71, "sex": "male",
                         "history": "allergic to quuxamine" },
            "ai": { "model": "gpt-4o-mini" } } }),
    )
    .await;
    let id = created["data"]["createSimulation"]["aggregateId"].clone();
    let count = "query($id: UUID!) { simulation(id: $id) { messageCount learnerId } }";
    eventually(Duration::from_secs(30), "the opening", || async {
        let s = call(&http, &url, count, json!({ "id": id })).await;
        (s["data"]["simulation"]["messageCount"] == 1).then_some(())
    })
    .await;
    let post = "mutation($id: UUID!) { postMessage(simulationId: $id, text: \"it hurts since Zanzibar\") { version } }";
    assert!(call(&http, &url, post, json!({ "id": id })).await["errors"].is_null());
    eventually(Duration::from_secs(30), "the reply", || async {
        let s = call(&http, &url, count, json!({ "id": id })).await;
        (s["data"]["simulation"]["messageCount"] == 3).then_some(())
    })
    .await;
    let forget = "mutation { forgetSubject(subjectId: \"learner:learner-zq\") { version } }";
    assert!(call(&http, &url, forget, json!({})).await["errors"].is_null());
    eventually(Duration::from_secs(15), "the erasure", || async {
        let s = call(&http, &url, count, json!({ "id": id })).await;
        (s["data"]["simulation"]["learnerId"] == "[erased]").then_some(())
    })
    .await;

    let mut child = child;
    child.start_kill().expect("stop the server");
    let output = child.wait_with_output().await.expect("its output");
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(logs.contains("simulation"), "the server logged: {logs}");
    assert_eq!(holds_any(&logs), Vec::<&str>::new(), "{logs}");
}
