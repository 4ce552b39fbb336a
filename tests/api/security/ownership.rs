//! Client A on client B's objects: every root field of the schema is either checked here to
//! deny A (with no event written) or listed as one that names no one's object.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{Subscription, TestApp, TestDb};

/// B's objects.
struct Owned {
    request: String,
    batch: String,
    simulation: String,
    transfer: String,
    query: String,
}

fn data_id(response: &Value, field: &str, id: &str) -> String {
    response["data"][field][id]
        .as_str()
        .unwrap_or_else(|| panic!("{field}: {response}"))
        .to_owned()
}

async fn objects_of(app: &TestApp, key: &str) -> Owned {
    let submitted = app
        .graphql_as(
            key,
            "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId batchId } }",
            json!({ "i": { "customId": "b1", "endpoint": "/v1/embeddings", "model": "m",
                           "body": { "input": "x" }, "delivery": { "poll": true } } }),
        )
        .await;
    let simulation = app
        .graphql_as(
            key,
            "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
            json!({ "i": {
                "learnerId": "learner-b",
                "scenario": { "diagnosis": "appendicitis", "chiefComplaint": "pain", "difficulty": "MEDIUM" },
                "patient": { "name": "Alex Doe", "age": 34, "sex": "female", "history": "none" },
                "ai": { "model": "gpt-4o-mini", "temperature": 0.7 } } }),
        )
        .await;
    let setup = json!({ "source": "pacs-a", "destination": "pacs-b", "pseudonymize": false });
    let transfer = app
        .graphql_as(
            key,
            "mutation($s: TransferSetupInput!, $t: [TransferTaskInput!]!) {
                createTransferJob(setup: $s, tasks: $t) { aggregateId } }",
            json!({ "s": setup, "t": [{ "patientId": "P1", "studyInstanceUid": "1.2.3" }] }),
        )
        .await;
    let query = app
        .graphql_as(
            key,
            "mutation { createQueryJob(source: \"pacs-a\", queries: [{ patientId: \"P1\" }]) { aggregateId } }",
            json!({}),
        )
        .await;
    Owned {
        request: data_id(&submitted, "submitRequest", "requestId"),
        batch: data_id(&submitted, "submitRequest", "batchId"),
        simulation: data_id(&simulation, "createSimulation", "aggregateId"),
        transfer: data_id(&transfer, "createTransferJob", "aggregateId"),
        query: data_id(&query, "createQueryJob", "aggregateId"),
    }
}

/// Events written under the correlation id of one call (process managers carry it on).
async fn events_of_call(app: &TestApp, correlation_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE metadata ->> 'correlation_id' = $1")
        .bind(correlation_id)
        .fetch_one(&app.pool)
        .await
        .expect("count")
}

/// Operations on B's objects that A must be refused, with the code A gets.
fn denied(b: &Owned) -> Vec<(&'static str, String, &'static str)> {
    let (r, ba, s, t, q) = (&b.request, &b.batch, &b.simulation, &b.transfer, &b.query);
    let setup = "{ source: \"pacs-a\", destination: \"pacs-b\" }";
    let nf = "NOT_FOUND";
    let forbidden = "FORBIDDEN";
    vec![
        ("cancelRequest", format!("mutation {{ cancelRequest(requestId: \"{r}\") {{ version }} }}"), nf),
        ("acknowledgeResult", format!("mutation {{ acknowledgeResult(requestId: \"{r}\") {{ version }} }}"), nf),
        ("reportResultFailure", format!("mutation {{ reportResultFailure(requestId: \"{r}\", reason: \"x\") {{ version }} }}"), nf),
        ("flushBatch", format!("mutation {{ flushBatch(batchId: \"{ba}\") {{ version }} }}"), nf),
        ("cancelBatch", format!("mutation {{ cancelBatch(batchId: \"{ba}\") {{ version }} }}"), nf),
        ("redeliver", format!("mutation {{ redeliver(requestId: \"{r}\") {{ version }} }}"), nf),
        ("redeliverBatch", format!("mutation {{ redeliverBatch(batchId: \"{ba}\") {{ requests }} }}"), nf),
        ("postMessage", format!("mutation {{ postMessage(simulationId: \"{s}\", text: \"hi\") {{ version }} }}"), nf),
        ("endSimulation", format!("mutation {{ endSimulation(simulationId: \"{s}\") {{ version }} }}"), nf),
        ("archiveSimulation", format!("mutation {{ archiveSimulation(simulationId: \"{s}\") {{ version }} }}"), nf),
        ("retryAiCall", format!("mutation {{ retryAiCall(simulationId: \"{s}\") {{ version }} }}"), nf),
        ("cancelTransferJob", format!("mutation {{ cancelTransferJob(id: \"{t}\") {{ version }} }}"), nf),
        ("resumeTransferJob", format!("mutation {{ resumeTransferJob(id: \"{t}\") {{ version }} }}"), nf),
        ("retryFailedTransferTasks", format!("mutation {{ retryFailedTransferTasks(id: \"{t}\") {{ version }} }}"), nf),
        ("restartTransferJob", format!("mutation {{ restartTransferJob(id: \"{t}\") {{ version }} }}"), nf),
        ("verifyTransferJob", format!("mutation {{ verifyTransferJob(id: \"{t}\") {{ version }} }}"), nf),
        ("registerDicomServer", "mutation { registerDicomServer(input: { name: \"pacs-a\", baseUrl: \"http://127.0.0.1:9/x\" }) { version } }".into(), forbidden),
        ("removeDicomServer", "mutation { removeDicomServer(name: \"pacs-a\") { version } }".into(), forbidden),
        ("createTransferJobFromQuery", format!("mutation {{ createTransferJobFromQuery(queryJobId: \"{q}\", setup: {setup}) {{ version }} }}"), nf),
        ("cancelQueryJob", format!("mutation {{ cancelQueryJob(id: \"{q}\") {{ version }} }}"), nf),
        ("resumeQueryJob", format!("mutation {{ resumeQueryJob(id: \"{q}\") {{ version }} }}"), nf),
        ("retryFailedQueryTasks", format!("mutation {{ retryFailedQueryTasks(id: \"{q}\") {{ version }} }}"), nf),
        ("verifyQueryJob", format!("mutation {{ verifyQueryJob(id: \"{q}\") {{ version }} }}"), nf),
        ("restartQueryJob", format!("mutation {{ restartQueryJob(id: \"{q}\") {{ version }} }}"), nf),
        ("createClient", "mutation { createClient(id: \"mallory\", role: ADMIN) { version } }".into(), forbidden),
        ("issueKey", "mutation { issueKey(clientId: \"client-b\") { key } }".into(), forbidden),
        ("revokeKey", "mutation { revokeKey(clientId: \"client-b\", keyId: \"x\") { version } }".into(), forbidden),
        ("rotateWebhookSecret", "mutation { rotateWebhookSecret(clientId: \"client-b\") { secret } }".into(), forbidden),
        ("forgetSubject", "mutation { forgetSubject(subjectId: \"learner:learner-b\") { version } }".into(), forbidden),
        ("request", format!("{{ request(id: \"{r}\") {{ id }} }}"), nf),
        ("batch", format!("{{ batch(id: \"{ba}\") {{ id }} }}"), nf),
        ("simulation", format!("{{ simulation(id: \"{s}\") {{ status }} }}"), nf),
        ("aggregateEvents", format!("{{ aggregateEvents(aggregateType: \"Batch\", aggregateId: \"{ba}\") {{ sequence }} }}"), nf),
        ("aggregateAt", format!("{{ aggregateAt(aggregateType: \"Simulation\", aggregateId: \"{s}\") {{ version }} }}"), nf),
        ("verifyAuditChain", format!("{{ verifyAuditChain(aggregateType: \"TransferJob\", aggregateId: \"{t}\") {{ intact }} }}"), nf),
        ("transferJob", format!("{{ transferJob(id: \"{t}\") {{ status }} }}"), nf),
        ("queryJob", format!("{{ queryJob(id: \"{q}\") {{ status }} }}"), nf),
        ("projections", "{ projections { name } }".into(), forbidden),
        ("roles", "{ roles { role } }".into(), forbidden),
        ("instances", "{ instances { name } }".into(), forbidden),
        ("retryParked", "mutation { retryParked(projection: \"requests\", cursor: \"c2.1\") { status } }".into(), forbidden),
        ("skipParked", "mutation { skipParked(projection: \"requests\", cursor: \"c2.1\") { status } }".into(), forbidden),
        ("rebuildProjection", "mutation { rebuildProjection(name: \"requests\") { name } }".into(), forbidden),
        ("cancelRebuild", "mutation { cancelRebuild(name: \"requests\") { name } }".into(), forbidden),
        ("clients", "{ clients { id } }".into(), forbidden),
        ("client", "{ client(id: \"client-b\") { id } }".into(), forbidden),
    ]
}

/// Lists A may read: none may hold B's objects.
const LISTS: [(&str, &str); 13] = [
    (
        "eventLog",
        "{ eventLog(first: 1000) { edges { node { aggregateId } } } }",
    ),
    ("requests", "{ requests { edges { node { id } } } }"),
    (
        "unacknowledgedResults",
        "{ unacknowledgedResults { edges { node { id } } } }",
    ),
    ("batches", "{ batches { edges { node { id } } } }"),
    ("simulations", "{ simulations { edges { node { id } } } }"),
    ("transferJobs", "{ transferJobs { edges { node { id } } } }"),
    ("queryJobs", "{ queryJobs { edges { node { id } } } }"),
    (
        "usage",
        "{ usage(from: \"2020-01-01\", to: \"2020-12-31\") { owner } }",
    ),
    (
        "batchTurnaround",
        "{ batchTurnaround(from: \"2020-01-01\", to: \"2020-12-31\") { owner } }",
    ),
    (
        "deliveryOutcomes",
        "{ deliveryOutcomes(from: \"2020-01-01\", to: \"2020-12-31\") { owner } }",
    ),
    (
        "simulationActivity",
        "{ simulationActivity(from: \"2020-01-01\", to: \"2020-12-31\") { owner } }",
    ),
    (
        "transferThroughput",
        "{ transferThroughput(from: \"2020-01-01\", to: \"2020-12-31\") { owner } }",
    ),
    ("me", "{ me { clientId } }"),
];

/// Fields that name no one's object: creations (the caller owns what it creates), the
/// caller's own secret, and the shared list of servers.
const UNSCOPED: [&str; 9] = [
    "submitRequest",
    "submitRequests",
    "createSimulation",
    "createTransferJob",
    "createTransferJobFromCsv",
    "createQueryJob",
    "createQueryJobFromCsv",
    "webhookSecret",
    "dicomServers",
];

/// Subscriptions to one of B's objects, and subscriptions to the caller's own streams.
fn subscriptions(b: &Owned) -> (Vec<(&'static str, String)>, [&'static str; 3]) {
    let one = vec![
        (
            "batchUpdated",
            format!(
                "subscription {{ batchUpdated(id: \"{}\") {{ version }} }}",
                b.batch
            ),
        ),
        (
            "requestUpdated",
            format!(
                "subscription {{ requestUpdated(id: \"{}\") {{ version }} }}",
                b.request
            ),
        ),
        (
            "simulationMessages",
            format!(
                "subscription {{ simulationMessages(id: \"{}\") {{ cursor }} }}",
                b.simulation
            ),
        ),
        (
            "transferJobUpdated",
            format!(
                "subscription {{ transferJobUpdated(id: \"{}\") {{ eventType }} }}",
                b.transfer
            ),
        ),
    ];
    (one, ["events", "batchesUpdated", "requestsUpdated"])
}

async fn root_fields(app: &TestApp) -> BTreeSet<String> {
    let response = app
        .graphql(
            "{ __schema { queryType { fields { name } } mutationType { fields { name } }
                          subscriptionType { fields { name } } } }",
            json!({}),
        )
        .await;
    let schema = &response["data"]["__schema"];
    ["queryType", "mutationType", "subscriptionType"]
        .iter()
        .flat_map(|root| {
            schema[root]["fields"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|field| field["name"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_can_neither_see_nor_change_another_clients_objects() {
    let db = TestDb::new().await;
    let app =
        TestApp::spawn_configured(&db, "ownership", |c| c.transfer.transfer_trusted = vec![]).await;
    for name in ["pacs-a", "pacs-b"] {
        let registered = app
            .graphql(
                "mutation($n: String!) { registerDicomServer(input: { name: $n, baseUrl: \"http://127.0.0.1:9/dicom-web\" }) { version } }",
                json!({ "n": name }),
            )
            .await;
        assert!(registered["errors"].is_null(), "{registered}");
    }
    let a = app.client_key("client-a", "CLIENT").await;
    let b_key = app.client_key("client-b", "CLIENT").await;
    let b = objects_of(&app, &b_key).await;

    // Every root field is covered below.
    let denied = denied(&b);
    let (one, own_streams) = subscriptions(&b);
    let covered: BTreeSet<String> = denied
        .iter()
        .map(|(name, ..)| *name)
        .chain(LISTS.iter().map(|(name, _)| *name))
        .chain(UNSCOPED)
        .chain(["transitions"])
        .chain(one.iter().map(|(name, _)| *name))
        .chain(own_streams)
        .map(str::to_owned)
        .collect();
    assert_eq!(
        root_fields(&app).await,
        covered,
        "a root field is not in the matrix"
    );

    for (name, operation, expected) in &denied {
        let correlation = format!("denied-{name}");
        let response = app
            .graphql_correlated(&a, &correlation, operation, json!({}))
            .await;
        assert_eq!(
            response["errors"][0]["extensions"]["code"], *expected,
            "{name}: {response}"
        );
        assert_eq!(
            events_of_call(&app, &correlation).await,
            0,
            "{name} wrote an event"
        );
        // The owner is not refused the same (or is refused only as an admin-only action).
        let own = app.graphql_as(&b_key, operation, json!({})).await;
        assert_ne!(
            own["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{name} as B: {own}"
        );
    }
    let b_ids = [&b.request, &b.batch, &b.simulation, &b.transfer, &b.query];
    for (name, query) in LISTS {
        let response = app.graphql_as(&a, query, json!({})).await;
        assert!(response["errors"].is_null(), "{name}: {response}");
        let text = response.to_string();
        assert!(
            b_ids.iter().all(|id| !text.contains(id.as_str())) && !text.contains("client-b"),
            "{name} shows B's objects: {text}"
        );
    }
    // Transitions of an aggregate the caller may not see are empty, as for one that does
    // not exist.
    let transitions = format!(
        "{{ transitions(aggregateId: \"{}\") {{ toState }} }}",
        b.batch
    );
    let theirs = app.graphql_as(&a, &transitions, json!({})).await;
    assert_eq!(theirs["data"]["transitions"], json!([]), "{theirs}");
    let own = app.graphql_as(&b_key, &transitions, json!({})).await;
    assert_ne!(own["data"]["transitions"], json!([]), "{own}");

    // B sees its own, and the admin sees B's too.
    for key in [b_key.as_str(), crate::support::ADMIN_KEY] {
        let listed = app
            .graphql_as(key, "{ requests { edges { node { id } } } }", json!({}))
            .await;
        assert!(listed.to_string().contains(&b.request), "{listed}");
    }

    for (name, subscription) in one {
        let mut stream = Subscription::start_as(&app.ws_url(), &a, &subscription, json!({})).await;
        let refused = stream
            .next_message(Duration::from_secs(10))
            .await
            .expect("a reply");
        assert_eq!(
            refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
            "{name}: {refused}"
        );
    }
    let mut streams = Vec::new();
    for query in [
        "subscription { events { aggregateId } }",
        "subscription { batchesUpdated { id } }",
        "subscription { requestsUpdated { id } }",
    ] {
        streams.push(Subscription::start_as(&app.ws_url(), &a, query, json!({})).await);
    }
    // B submits, then A does: each of A's streams shows A's first, never B's.
    let submit = |custom_id: &str| {
        json!({ "i": { "customId": custom_id, "endpoint": "/v1/embeddings", "model": "m",
                       "body": { "input": "x" }, "delivery": { "poll": true } } })
    };
    let mutation =
        "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId batchId } }";
    let theirs = app.graphql_as(&b_key, mutation, submit("b2")).await;
    assert!(theirs["errors"].is_null(), "{theirs}");
    let mine = app.graphql_as(&a, mutation, submit("a1")).await;
    assert!(mine["errors"].is_null(), "{mine}");
    let their_ids = [
        data_id(&theirs, "submitRequest", "requestId"),
        data_id(&theirs, "submitRequest", "batchId"),
    ];
    for mut stream in streams {
        let first = stream
            .next_data(Duration::from_secs(15))
            .await
            .expect("A's own event");
        let text = first.to_string();
        assert!(
            their_ids.iter().all(|id| !text.contains(id.as_str())),
            "{text}"
        );
    }
    app.stop().await;
}
