//! Reading one's writes: a request with `x-chronicle-after: <cursor a mutation returned>` is
//! served once the read models have applied the log up to there, or refused, bounded.

use serde_json::{json, Value};

use crate::support::{error_code as code, TestApp, TestDb, ADMIN_KEY};

const CREATE: &str = "mutation($i: CreateSimulationInput!) {
    createSimulation(input: $i) { aggregateId cursor } }";
const READ: &str = "query($id: UUID!) { simulation(id: $id) { id status } }";

async fn post(app: &TestApp, after: Option<&str>, query: &str, variables: Value) -> (u16, Value) {
    let bearer = format!("Bearer {ADMIN_KEY}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    headers.extend(after.map(|after| ("x-chronicle-after", after)));
    app.post_with(&headers, query, variables).await
}

#[tokio::test]
async fn a_read_after_the_mutations_cursor_sees_the_write_and_a_position_never_reached_is_refused()
{
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "read-your-writes").await;
    for n in 0..10 {
        let (_, created) = post(
            &app,
            None,
            CREATE,
            json!({ "i": {
                "learnerId": format!("learner-{n}"),
                "scenario": { "diagnosis": "gout", "chiefComplaint": "toe", "difficulty": "EASY" },
                "patient": { "name": "P", "age": 60, "sex": "female", "history": "none" },
                "ai": { "model": "m" } } }),
        )
        .await;
        let outcome = &created["data"]["createSimulation"];
        let (id, cursor) = (outcome["aggregateId"].clone(), outcome["cursor"].clone());
        let cursor = cursor.as_str().unwrap_or_else(|| panic!("{created}"));
        // At once, without retrying: the header waits for the simulations read model.
        let (status, read) = post(&app, Some(cursor), READ, json!({ "id": id })).await;
        assert_eq!(status, 200, "{read}");
        assert_eq!(read["data"]["simulation"]["id"], id, "{read}");
    }

    let started = std::time::Instant::now();
    let (status, refused) = post(
        &app,
        Some("c2.999999999"),
        READ,
        json!({ "id": "00000000-0000-7000-8000-000000000000" }),
    )
    .await;
    assert_eq!((status, code(&refused)), (503, "UNAVAILABLE"), "{refused}");
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));

    for bad in ["c1.nope", "later", "c2.-1"] {
        let (status, refused) = post(
            &app,
            Some(bad),
            READ,
            json!({ "id": "00000000-0000-7000-8000-000000000000" }),
        )
        .await;
        assert_eq!(
            (status, code(&refused)),
            (400, "VALIDATION"),
            "{bad}: {refused}"
        );
    }
    app.stop().await;
}

/// Runs `query` once and returns its data, failing on any error.
async fn read(app: &TestApp, query: &str, variables: Value) -> Value {
    let (status, answer) = post(app, None, query, variables).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"].clone()
}

#[tokio::test]
async fn what_a_mutation_wrote_is_listed_and_read_at_once_for_every_kind_of_work() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "read-your-writes").await;
    // No header, no retry: the read models are written in the mutation's transaction.
    let submit =
        "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId batchId } }";
    let input = json!({ "i": { "customId": "a-1", "endpoint": "/v1/chat/completions",
        "model": "m", "body": { "model": "m", "messages": [] }, "delivery": { "poll": true } } });
    let submitted = read(&app, submit, input).await["submitRequest"].clone();
    let (request, batch) = (&submitted["requestId"], &submitted["batchId"]);
    let listed = read(
        &app,
        "{ requests { edges { node { id status } } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        listed["requests"]["edges"][0]["node"]["id"], *request,
        "{listed}"
    );
    let one = "query($r: UUID!, $b: UUID!) { request(id: $r) { status }
        batch(id: $b) { requestCount } transitions(aggregateId: $r) { toState } }";
    let found = read(&app, one, json!({ "r": request, "b": batch })).await;
    assert_eq!(found["request"]["status"], "pending", "{found}");
    assert_eq!(found["batch"]["requestCount"], 1, "{found}");
    assert_eq!(found["transitions"][0]["toState"], "pending", "{found}");

    let (_, created) = post(
        &app,
        None,
        CREATE,
        json!({ "i": {
        "learnerId": "learner-1",
        "scenario": { "diagnosis": "gout", "chiefComplaint": "toe", "difficulty": "EASY" },
        "patient": { "name": "P", "age": 60, "sex": "female", "history": "none" },
        "ai": { "model": "m" } } }),
    )
    .await;
    let simulation = &created["data"]["createSimulation"]["aggregateId"];
    let listed = read(&app, "{ simulations { edges { node { id } } } }", json!({})).await;
    assert_eq!(
        listed["simulations"]["edges"][0]["node"]["id"], *simulation,
        "{listed}"
    );

    for name in ["clinical", "research"] {
        let register =
            "mutation($i: DicomServerInput!) { registerDicomServer(input: $i) { aggregateId } }";
        let url = format!("http://127.0.0.1:9/{name}/dicom-web");
        read(
            &app,
            register,
            json!({ "i": { "name": name, "baseUrl": url } }),
        )
        .await;
    }
    let create = "mutation($s: TransferSetupInput!, $t: [TransferTaskInput!]!) {
        createTransferJob(setup: $s, tasks: $t) { aggregateId } }";
    let setup = json!({ "source": "clinical", "destination": "research", "pseudonymize": false });
    let tasks = json!([{ "patientId": "P1", "studyInstanceUid": "1.2.3" }]);
    let job = read(&app, create, json!({ "s": setup, "t": tasks })).await["createTransferJob"]
        ["aggregateId"]
        .clone();
    let found = read(
        &app,
        "query($id: UUID!) { transferJob(id: $id) { taskCount } }",
        json!({ "id": job }),
    )
    .await;
    assert_eq!(found["transferJob"]["taskCount"], 1, "{found}");
    app.stop().await;
}
