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
