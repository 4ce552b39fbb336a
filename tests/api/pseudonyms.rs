//! Derived pseudonyms and UIDs are keyed under the patient's own key: nobody computes them
//! from a job id and a guessed PatientID, other jobs get unrelated ones, and once the patient
//! is forgotten nobody can derive them again.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::dicom_files::PATIENT_ID;
use crate::transfers::{job_when, setup, site, STUDY_B};

const CREATE: &str = "mutation($setup: TransferSetupInput!, $tasks: [TransferTaskInput!]!) {
    createTransferJob(setup: $setup, tasks: $tasks) { aggregateId } }";

async fn pseudonymized_job(app: &crate::support::TestApp) -> Uuid {
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_B }]);
    let created = app
        .graphql(CREATE, json!({ "setup": setup(true), "tasks": tasks }))
        .await;
    let id: Uuid = created["data"]["createTransferJob"]["aggregateId"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("{created}"));
    job_when(app, &id.to_string(), "success").await;
    id
}

fn patient_ids(stored: &[Value]) -> Vec<String> {
    stored
        .iter()
        .filter_map(|instance| instance["PatientID"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn derived_pseudonyms_are_keyed_per_patient_and_end_when_the_patient_is_forgotten() {
    let site = site(&["*"]).await;
    let first = pseudonymized_job(&site.app).await;
    let stored = site.destination.instances().await;
    let pseudonym = patient_ids(&stored).pop().expect("one instance");
    assert!(pseudonym.starts_with("PSN-"), "{pseudonym}");
    // Not what anyone could compute from the job id and a guessed PatientID.
    let unkeyed = Uuid::new_v5(&first, PATIENT_ID.as_bytes())
        .simple()
        .to_string();
    assert_ne!(pseudonym, format!("PSN-{}", &unkeyed[..16]));
    let log: String = sqlx::query_scalar("SELECT string_agg(payload::text, ' ') FROM events")
        .fetch_one(&site.app.pool)
        .await
        .expect("log");
    assert!(!log.contains(&pseudonym), "the mapping is in the log");

    // Another job for the same patient: unrelated pseudonym and UIDs.
    pseudonymized_job(&site.app).await;
    let stored = site.destination.instances().await;
    assert_eq!(stored.len(), 2, "new UIDs per job: {stored:?}");
    let pseudonyms = patient_ids(&stored);
    assert_ne!(pseudonyms[0], pseudonyms[1], "linkable across jobs");

    // Forgotten: the job cannot derive the pseudonym again, and nothing more is sent.
    let forgot = site
        .app
        .graphql(
            "mutation($s: String!) { forgetSubject(subjectId: $s) { version } }",
            json!({ "s": format!("patient:{PATIENT_ID}") }),
        )
        .await;
    assert!(forgot["errors"].is_null(), "{forgot}");
    let restart = "mutation($id: UUID!) { restartTransferJob(id: $id) { version } }";
    let restarted = site.app.graphql(restart, json!({ "id": first })).await;
    assert!(restarted["errors"].is_null(), "{restarted}");
    let job = job_when(&site.app, &first.to_string(), "failure").await;
    assert!(job.to_string().contains("forgotten"), "{job}");
    assert_eq!(site.destination.instances().await.len(), 2);
}
