//! An instance whose pepper differs from the database's refuses to start, and personal data
//! that does not open is an error, never "erased".

use chronicle::privacy::{Vault, ERASED};
use serde_json::{json, Value};

use crate::support::{TestApp, TestDb};

const OTHER_PEPPER: &str = "another pepper";

/// A simulation whose learner's data is sealed in the log.
async fn seal_some_personal_data(app: &TestApp) {
    let created = app
        .graphql(
            "mutation($i: CreateSimulationInput!) { createSimulation(input: $i) { aggregateId } }",
            json!({ "i": {
                "learnerId": "learner-drift",
                "scenario": { "diagnosis": "gout", "chiefComplaint": "toe", "difficulty": "EASY" },
                "patient": { "name": "Drusilla Fenwick", "age": 60, "sex": "female", "history": "none" },
                "ai": { "model": "gpt-4o-mini" } } }),
        )
        .await;
    assert!(created["errors"].is_null(), "{created}");
}

async fn refusal(db: &TestDb) -> String {
    match TestApp::try_spawn_configured(db, "drift", |c| {
        c.security.key_pepper = Some(OTHER_PEPPER.into());
    })
    .await
    {
        Ok(app) => {
            app.stop().await;
            panic!("an instance with another pepper started");
        }
        Err(error) => format!("{error:#}"),
    }
}

#[tokio::test]
async fn an_instance_with_another_pepper_refuses_to_start_naming_the_setting() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "drift").await;
    seal_some_personal_data(&app).await;
    app.stop().await;

    let why = refusal(&db).await;
    assert!(why.contains("CHRONICLE_KEY_PEPPER"), "{why}");

    // A database from before fingerprints: the stored data keys tell the pepper apart.
    sqlx::query("DELETE FROM server_secrets WHERE name = 'key_pepper_fingerprint'")
        .execute(&db.pool)
        .await
        .expect("forget the fingerprint");
    let why = refusal(&db).await;
    assert!(why.contains("CHRONICLE_KEY_PEPPER"), "{why}");

    // The right pepper still starts, and records the fingerprint again.
    let app = TestApp::spawn(&db, "drift").await;
    let me = app.graphql("{ me { clientId } }", json!({})).await;
    assert_eq!(me["data"]["me"]["clientId"], "admin", "{me}");
    app.stop().await;
}

#[tokio::test]
async fn personal_data_that_does_not_open_is_an_error_not_erased() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "drift").await;
    seal_some_personal_data(&app).await;
    let payloads: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'Simulation' ORDER BY sequence",
    )
    .fetch_all(&app.pool)
    .await
    .expect("events");
    assert!(!payloads.is_empty());

    let mut opened = payloads.clone();
    crate::support::vault(&app.pool)
        .open(opened.iter_mut().map(|payload| ("Simulation", payload)))
        .await
        .expect("the right pepper opens");
    assert!(opened[0].to_string().contains("Drusilla Fenwick"));

    let mut drifted = payloads.clone();
    let read = Vault::new(app.pool.clone(), OTHER_PEPPER.as_bytes())
        .open(drifted.iter_mut().map(|payload| ("Simulation", payload)))
        .await;
    assert!(read.is_err(), "another pepper must fail, not erase");
    assert!(!drifted.iter().any(|p| p.to_string().contains(ERASED)));
    app.stop().await;
}
