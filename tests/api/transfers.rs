//! Transfer jobs against two real Orthanc servers with DICOMweb: studies moved and
//! pseudonymized, missing studies and series by the status rule, cancel/resume/verify, CSV
//! validation all or nothing, and servers that must be registered.

use std::collections::HashSet;
use std::time::Duration;

use chronicle_aggregates::transfer::{TransferCommand, TransferJob};
use chrono::Utc;
use serde_json::{json, Value};

use crate::analytics::rebuild;
use crate::archive::caught_up;
use crate::support::dicom_files::{ct_instance, PATIENT_ID, PATIENT_NAME};
use crate::support::{app_context, eventually, Orthanc, Subscription, TestApp, TestDb, ADMIN_KEY};

pub(crate) const STUDY_A: &str = "1.2.826.0.1.3680043.10.1001";
const SERIES_A1: &str = "1.2.826.0.1.3680043.10.1001.1";
const SERIES_A2: &str = "1.2.826.0.1.3680043.10.1001.2";
pub(crate) const STUDY_B: &str = "1.2.826.0.1.3680043.10.1002";
const SERIES_B1: &str = "1.2.826.0.1.3680043.10.1002.1";
const MISSING: &str = "1.2.826.0.1.3680043.10.404";

const REGISTER: &str = "mutation($input: DicomServerInput!) {
    registerDicomServer(input: $input) { aggregateId } }";
const CREATE: &str = "mutation($setup: TransferSetupInput!, $tasks: [TransferTaskInput!]!) {
    createTransferJob(setup: $setup, tasks: $tasks) { aggregateId } }";
const CREATE_CSV: &str = "mutation($setup: TransferSetupInput!, $csv: String!) {
    createTransferJobFromCsv(setup: $setup, csv: $csv) { aggregateId } }";
const JOB: &str = "query($id: UUID!) { transferJob(id: $id) {
    status taskCount instancesMoved verifiedBy taskCounts { status count }
    tasks { edges { node { task status attempts instances message studyInstanceUid } } } } }";

/// Two PACS (study A: two series of two instances; study B: one instance at the source) and
/// an app that knows them as `clinical` and `research`.
pub(crate) struct Site {
    pub(crate) source: Orthanc,
    pub(crate) destination: Orthanc,
    pub(crate) app: TestApp,
    /// A key of the client `clinic`, whose jobs need an admin's verify unless trusted.
    pub(crate) clinic: String,
    pub(crate) _db: TestDb,
}

pub(crate) async fn site(trusted: &[&str]) -> Site {
    site_polling(trusted, 50).await
}

/// [`site`] with the runner looking for work every `poll_ms`.
async fn site_polling(trusted: &[&str], poll_ms: u64) -> Site {
    let (source, destination) =
        tokio::join!(Orthanc::start("clinical"), Orthanc::start("research"));
    for (n, (series, instances)) in [(SERIES_A1, 2), (SERIES_A2, 2)].into_iter().enumerate() {
        for i in 1..=instances {
            let uid = format!("{series}.{i}");
            source
                .upload(ct_instance(STUDY_A, series, &uid, (n * 10 + i) as u32))
                .await;
        }
    }
    source
        .upload(ct_instance(
            STUDY_B,
            SERIES_B1,
            &format!("{SERIES_B1}.1"),
            1,
        ))
        .await;
    let db = TestDb::new().await;
    let trusted: Vec<String> = trusted.iter().map(|s| (*s).to_owned()).collect();
    let app = TestApp::spawn_configured(&db, "transfers", |c| {
        c.transfer.transfer_trusted = trusted;
        c.transfer.transfer_poll_ms = poll_ms;
    })
    .await;
    for (name, url) in [
        ("clinical", source.dicomweb()),
        ("research", destination.dicomweb()),
    ] {
        let response = app
            .graphql(
                REGISTER,
                json!({ "input": { "name": name, "baseUrl": url } }),
            )
            .await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let clinic = app.client_key("clinic", "CLIENT").await;
    Site {
        source,
        destination,
        app,
        clinic,
        _db: db,
    }
}

pub(crate) fn setup(pseudonymize: bool) -> Value {
    json!({ "source": "clinical", "destination": "research", "pseudonymize": pseudonymize })
}

/// Creates a job as the admin (whose jobs never wait for a verify).
async fn create(app: &TestApp, setup: Value, tasks: Value) -> String {
    create_as(app, ADMIN_KEY, setup, tasks).await
}

/// Creates a job with API key `key`.
async fn create_as(app: &TestApp, key: &str, setup: Value, tasks: Value) -> String {
    let response = app
        .graphql_as(key, CREATE, json!({ "setup": setup, "tasks": tasks }))
        .await;
    response["data"]["createTransferJob"]["aggregateId"]
        .as_str()
        .unwrap_or_else(|| panic!("created: {response}"))
        .to_owned()
}

/// The job once its status is `status`.
pub(crate) async fn job_when(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(60),
        &format!("job {status}"),
        || async {
            let job = app.graphql(JOB, json!({ "id": id })).await["data"]["transferJob"].clone();
            (job["status"] == status).then_some(job)
        },
    )
    .await
}

fn tasks_of(job: &Value) -> Vec<Value> {
    job["tasks"]["edges"]
        .as_array()
        .map(|edges| edges.iter().map(|e| e["node"].clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moves_a_study_pseudonymized_with_consistent_new_uids() {
    let site = site(&["*"]).await;
    let mut setup = setup(true);
    setup["pseudonym"] = json!("SUBJ-001");
    setup["protocol"] = json!({ "id": "TRIAL-7", "name": "Lung screening" });
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_A }]);
    let id = create(&site.app, setup, tasks).await;
    let job = job_when(&site.app, &id, "success").await;
    assert_eq!(job["instancesMoved"], 4, "{job}");
    assert_eq!(tasks_of(&job)[0]["instances"], 4, "{job}");

    let stored = site.destination.instances().await;
    assert_eq!(stored.len(), 4);
    let text = serde_json::to_string(&stored).expect("json");
    for identifying in [
        PATIENT_NAME,
        PATIENT_ID,
        "MRN-OLD-0815",
        "Smith^Operator",
        "General Hospital",
        "ACC-1",
        "19800101",
        "private note",
        STUDY_A,
    ] {
        assert!(!text.contains(identifying), "{identifying} left in {text}");
    }
    let studies: HashSet<&str> = stored
        .iter()
        .filter_map(|i| i["StudyInstanceUID"].as_str())
        .collect();
    let series: HashSet<&str> = stored
        .iter()
        .filter_map(|i| i["SeriesInstanceUID"].as_str())
        .collect();
    let instances: HashSet<&str> = stored
        .iter()
        .filter_map(|i| i["SOPInstanceUID"].as_str())
        .collect();
    assert_eq!(
        (studies.len(), series.len(), instances.len()),
        (1, 2, 4),
        "{text}"
    );
    assert!(
        studies.iter().all(|uid| uid.starts_with("2.25.")),
        "{studies:?}"
    );
    // One original frame of reference and one referenced instance: one new UID each, shared.
    let frames: HashSet<&str> = stored
        .iter()
        .filter_map(|i| i["FrameOfReferenceUID"].as_str())
        .collect();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert!(frames.iter().all(|u| u.starts_with("2.25.")), "{frames:?}");
    let referenced: HashSet<&str> = stored
        .iter()
        .filter_map(|i| i["ReferencedPatientSequence"][0]["ReferencedSOPInstanceUID"].as_str())
        .collect();
    assert_eq!(referenced.len(), 1, "{referenced:?}");
    assert!(
        referenced.iter().all(|u| u.starts_with("2.25.")),
        "{referenced:?}"
    );
    for instance in &stored {
        assert_eq!(instance["PatientID"], "SUBJ-001");
        assert_eq!(instance["PatientName"], "SUBJ-001");
        assert_eq!(instance["ClinicalTrialProtocolID"], "TRIAL-7");
        assert_eq!(instance["PatientIdentityRemoved"], "YES");
        assert_eq!(
            instance["ReferencedPatientSequence"][0]["PatientName"], "SUBJ-001",
            "nested names are replaced too"
        );
        assert_eq!(
            instance["StudyDate"], "20260101",
            "longitudinal dates are kept"
        );
    }

    // The same job run again (restart) stores the same UIDs: nothing new appears.
    let restart = "mutation($id: UUID!) { restartTransferJob(id: $id) { version } }";
    let restarted = site.app.graphql(restart, json!({ "id": id })).await;
    assert!(restarted["errors"].is_null(), "{restarted}");
    job_when(&site.app, &id, "success").await;
    let again: HashSet<String> = site
        .destination
        .instances()
        .await
        .iter()
        .filter_map(|i| i["SOPInstanceUID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(again, instances.iter().map(|s| (*s).to_owned()).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_study_fails_its_task_and_the_job_follows_the_rule() {
    let site = site(&["*"]).await;
    let tasks = json!([
        { "patientId": PATIENT_ID, "studyInstanceUid": STUDY_B },
        { "patientId": PATIENT_ID, "studyInstanceUid": MISSING },
        { "patientId": "SOMEONE-ELSE", "studyInstanceUid": STUDY_A },
    ]);
    let id = create(&site.app, setup(false), tasks).await;
    let job = job_when(&site.app, &id, "failure").await;
    let tasks = tasks_of(&job);
    assert_eq!(tasks[0]["status"], "success", "{job}");
    assert_eq!(tasks[1]["status"], "failure", "{job}");
    assert!(
        tasks[1]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not found")),
        "{job}"
    );
    assert_eq!(tasks[2]["status"], "failure", "{job}");
    assert!(
        tasks[2]["message"]
            .as_str()
            .is_some_and(|m| m.contains("another patient")),
        "a study of another patient is not moved: {job}"
    );
    let stored = site.destination.instances().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0]["PatientID"], PATIENT_ID,
        "not pseudonymized when not asked"
    );
    assert_eq!(stored[0]["StudyInstanceUID"], STUDY_B);

    // A missing requested series beside a found one: warning.
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_A,
                         "seriesInstanceUids": [SERIES_A1, MISSING] }]);
    let id = create(&site.app, setup(false), tasks).await;
    let job = job_when(&site.app, &id, "warning").await;
    assert_eq!(tasks_of(&job)[0]["instances"], 2, "{job}");
    assert!(
        tasks_of(&job)[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains(MISSING)),
        "{job}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unverified_job_waits_and_can_be_canceled_resumed_and_verified() {
    let site = site(&[]).await;
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_B }]);
    let id = create_as(&site.app, &site.clinic, setup(false), tasks).await;
    job_when(&site.app, &id, "unverified").await;
    let action = |name: &str| format!("mutation($id: UUID!) {{ {name}(id: $id) {{ version }} }}");
    let canceled = site
        .app
        .graphql(&action("cancelTransferJob"), json!({ "id": id }))
        .await;
    assert!(canceled["errors"].is_null(), "{canceled}");
    let job = job_when(&site.app, &id, "canceled").await;
    assert_eq!(tasks_of(&job)[0]["status"], "canceled");
    let refused = site
        .app
        .graphql(&action("verifyTransferJob"), json!({ "id": id }))
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "INVALID_TRANSITION",
        "{refused}"
    );

    let resumed = site
        .app
        .graphql(&action("resumeTransferJob"), json!({ "id": id }))
        .await;
    assert!(resumed["errors"].is_null(), "{resumed}");
    job_when(&site.app, &id, "unverified").await;
    assert!(
        site.destination.instances().await.is_empty(),
        "nothing runs unverified"
    );
    let verified = site
        .app
        .graphql(&action("verifyTransferJob"), json!({ "id": id }))
        .await;
    assert!(verified["errors"].is_null(), "{verified}");
    let job = job_when(&site.app, &id, "success").await;
    assert_eq!(job["verifiedBy"], "admin");
    assert_eq!(site.destination.instances().await.len(), 1);

    // The job's whole life, replayed then live, as its subscribers see it.
    let query = "subscription($id: UUID!) { transferJobUpdated(id: $id) {
        eventType jobStatus task taskStatus instances } }";
    let mut updates = Subscription::start(&site.app.ws_url(), query, json!({ "id": id })).await;
    let mut seen = Vec::new();
    while let Some(data) = updates.next_data(Duration::from_secs(5)).await {
        let update = data["transferJobUpdated"].clone();
        let done = update["jobStatus"] == "success";
        seen.push(update);
        if done {
            break;
        }
    }
    let statuses: Vec<&str> = seen
        .iter()
        .filter_map(|u| u["jobStatus"].as_str())
        .collect();
    assert_eq!(
        statuses,
        [
            "canceled",
            "unverified",
            "pending",
            "in_progress",
            "success"
        ],
        "{seen:?}"
    );
    let finished = seen
        .iter()
        .find(|u| u["eventType"] == "TransferTaskFinished")
        .expect("task finished");
    assert_eq!(
        (
            finished["task"].clone(),
            finished["taskStatus"].clone(),
            finished["instances"].clone()
        ),
        (json!(1), json!("success"), json!(1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canceling_a_running_job_stops_it_and_retry_is_refused_until_it_failed() {
    let mut site = site(&["*"]).await;
    // The source goes away: the task keeps failing transiently while the job runs.
    site.source.stop().await;
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_A }]);
    let id = create(&site.app, setup(false), tasks).await;
    job_when(&site.app, &id, "in_progress").await;
    let retry = "mutation($id: UUID!) { retryFailedTransferTasks(id: $id) { version } }";
    let refused = site.app.graphql(retry, json!({ "id": id })).await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "INVALID_TRANSITION",
        "{refused}"
    );
    let cancel = "mutation($id: UUID!) { cancelTransferJob(id: $id) { version } }";
    let canceled = site.app.graphql(cancel, json!({ "id": id })).await;
    assert!(canceled["errors"].is_null(), "{canceled}");
    let job = job_when(&site.app, &id, "canceled").await;
    assert_eq!(tasks_of(&job)[0]["status"], "canceled", "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_study_between_two_instances() {
    let site = site(&["*"]).await;
    // A study big enough to be moving when the cancel arrives (progress every 2 s).
    let (study, series) = (
        "1.2.826.0.1.3680043.10.1003",
        "1.2.826.0.1.3680043.10.1003.1",
    );
    for i in 1..=600 {
        let uid = format!("{series}.{i}");
        site.source
            .upload(ct_instance(study, series, &uid, i))
            .await;
    }
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": study }]);
    let id = create(&site.app, setup(true), tasks).await;
    eventually(Duration::from_secs(60), "the move under way", || async {
        let job = site.app.graphql(JOB, json!({ "id": id })).await["data"]["transferJob"].clone();
        (job["instancesMoved"].as_i64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    let cancel = "mutation($id: UUID!) { cancelTransferJob(id: $id) { version } }";
    let canceled = site.app.graphql(cancel, json!({ "id": id })).await;
    assert!(canceled["errors"].is_null(), "{canceled}");
    let job = job_when(&site.app, &id, "canceled").await;
    let task = &tasks_of(&job)[0];
    assert_eq!(task["status"], "canceled", "{job}");
    let moved = task["instances"].as_i64().unwrap_or(0);
    assert!(0 < moved && moved < 600, "stopped part-way: {job}");
    assert_eq!(site.destination.instances().await.len() as i64, moved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_source_is_retried_with_growing_waits_then_the_task_fails() {
    let mut site = site(&["*"]).await;
    site.source.stop().await;
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_A }]);
    let id = create(&site.app, setup(false), tasks).await;
    let job = job_when(&site.app, &id, "failure").await;
    let task = &tasks_of(&job)[0];
    assert_eq!(
        task["attempts"], 4,
        "three retries after the first attempt: {job}"
    );
    assert!(
        task["message"]
            .as_str()
            .is_some_and(|m| m.contains("clinical")),
        "{job}"
    );
    let waits: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM (payload -> 'TaskRetryScheduled' ->> 'retry_at')::timestamptz
                               - (payload -> 'TaskRetryScheduled' ->> 'at')::timestamptz)::float8
           FROM events WHERE aggregate_id = $1 AND event_type = 'TransferTaskRetryScheduled'
          ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&site.app.pool)
    .await
    .expect("retries");
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert!(
        waits.windows(2).all(|w| w[1] > w[0]),
        "waits grow: {waits:?}"
    );
    let retry = "mutation($id: UUID!) { retryFailedTransferTasks(id: $id) { version } }";
    let retried = site.app.graphql(retry, json!({ "id": id })).await;
    assert!(
        retried["errors"].is_null(),
        "a failed task may be retried: {retried}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cut_off_by_a_crash_is_interrupted_and_run_again_by_the_next_instance() {
    // The runner of this instance looked for work once at start and sleeps for an hour.
    let site = site_polling(&[], 3_600_000).await;
    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_A }]);
    let id = create_as(&site.app, &site.clinic, setup(true), tasks).await;
    let job_id: uuid::Uuid = id.parse().expect("uuid");
    for command in [
        TransferCommand::Verify {
            by: "admin".into(),
            at: Utc::now(),
        },
        TransferCommand::StartTask {
            task: 1,
            at: Utc::now(),
        },
    ] {
        site.app
            .commands
            .execute::<TransferJob>(&app_context(), &id, command, &(), None)
            .await
            .expect("command");
    }
    // It crashes with the task started and nothing moved.
    let Site {
        source,
        destination,
        app,
        _db: db,
        ..
    } = site;
    app.kill().await;
    let next = TestApp::spawn_configured(&db, "next", |c| c.transfer.transfer_poll_ms = 50).await;
    let job = job_when(&next, &id, "success").await;
    assert_eq!(
        tasks_of(&job)[0]["attempts"],
        1,
        "the cut-off run spent no attempt: {job}"
    );
    assert_eq!(destination.instances().await.len(), 4);
    let interrupted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'TransferTaskInterrupted'",
    )
    .bind(job_id.to_string())
    .fetch_one(&next.pool)
    .await
    .expect("count");
    assert_eq!(interrupted, 1);
    drop(source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_with_one_bad_row_is_refused_whole_and_a_good_one_becomes_a_job() {
    let site = site(&["*"]).await;
    let events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&site.app.pool)
            .await
            .expect("count")
    };
    let before = events().await;
    let bad = format!(
        "PatientID,StudyInstanceUID,Pseudonym\n{PATIENT_ID},{STUDY_A},S1\n{PATIENT_ID},1.02.x,S2\n"
    );
    let refused = site
        .app
        .graphql(CREATE_CSV, json!({ "setup": setup(true), "csv": bad }))
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "VALIDATION",
        "{refused}"
    );
    let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("row 3") && !message.contains("row 2"),
        "{message}"
    );
    assert_eq!(events().await, before, "nothing written");

    let good = format!("PatientID,StudyInstanceUID,Pseudonym\n{PATIENT_ID},{STUDY_A},S1\n{PATIENT_ID},{STUDY_B},S2\n");
    let created = site
        .app
        .graphql(CREATE_CSV, json!({ "setup": setup(true), "csv": good }))
        .await;
    let id = created["data"]["createTransferJobFromCsv"]["aggregateId"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"))
        .to_owned();
    let job = job_when(&site.app, &id, "success").await;
    assert_eq!(job["taskCount"], 2);
    let pseudonyms: HashSet<String> = site
        .destination
        .instances()
        .await
        .iter()
        .filter_map(|i| i["PatientID"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        pseudonyms,
        HashSet::from(["S1".to_owned(), "S2".to_owned()])
    );

    let today = Utc::now().date_naive();
    let throughput =
        "query($from: NaiveDate!, $to: NaiveDate!) { transferThroughput(from: $from, to: $to) {
        source destination studies instances failures } }";
    let days = json!({ "from": today, "to": today + chrono::Days::new(1) });
    let rows = eventually(Duration::from_secs(10), "throughput", || async {
        let response = site.app.graphql(throughput, days.clone()).await;
        let rows = response["data"]["transferThroughput"].clone();
        (rows[0]["studies"] == 2).then_some(rows)
    })
    .await;
    assert_eq!(
        rows,
        json!([{ "source": "clinical", "destination": "research", "studies": 2,
                 "instances": 5, "failures": 0 }])
    );

    // The read models rebuilt from zero equal the incrementally built ones.
    let Site { app, _db: db, .. } = site;
    caught_up(&db.pool).await;
    app.stop().await;
    let incremental = tables(&db.pool).await;
    rebuild(&db, "transfers").await;
    assert_eq!(tables(&db.pool).await, incremental);
}

/// Every transfer read model, as sorted text rows.
async fn tables(pool: &sqlx::PgPool) -> Vec<String> {
    let mut all = Vec::new();
    for table in [
        "dicom_servers",
        "transfer_jobs",
        "transfer_tasks",
        "analytics.transfer_daily",
    ] {
        let mut rows: Vec<String> = sqlx::query_scalar(&format!("SELECT t::text FROM {table} t"))
            .fetch_all(pool)
            .await
            .expect("read model");
        rows.sort();
        all.push(format!("{table}: {}", rows.join(" | ")));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_name_registered_servers_and_registrations_are_validated() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "servers").await;
    let tasks = json!([{ "patientId": "P", "studyInstanceUid": STUDY_A }]);
    let refused = app
        .graphql(CREATE, json!({ "setup": setup(false), "tasks": tasks }))
        .await;
    assert_eq!(
        refused["errors"][0]["extensions"]["code"], "VALIDATION",
        "{refused}"
    );
    let bad = app
        .graphql(
            REGISTER,
            json!({ "input": { "name": "a b", "baseUrl": "ftp://x",
                                               "auth": { "kind": "BASIC", "secretEnv": "1X" } } }),
        )
        .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "VALIDATION",
        "{bad}"
    );
    let message = bad["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("name") && message.contains("baseUrl") && message.contains("secretEnv"),
        "{message}"
    );
    let listed = app.graphql("{ dicomServers { name } }", json!({})).await;
    assert_eq!(listed["data"]["dicomServers"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_behind_basic_auth_is_reached_with_credentials_from_the_environment() {
    let (source, destination) = tokio::join!(
        Orthanc::start_as("guarded", Some(("chronicle", "s3cret"))),
        Orthanc::start("research")
    );
    source
        .upload(ct_instance(
            STUDY_B,
            SERIES_B1,
            &format!("{SERIES_B1}.1"),
            1,
        ))
        .await;
    // Each test runs in its own process (nextest): the variable is this test's alone.
    std::env::set_var("CHRONICLE_DICOM_TEST_GOOD", "chronicle:s3cret");
    std::env::set_var("CHRONICLE_DICOM_TEST_BAD", "chronicle:wrong");
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "auth").await;
    for (name, secret_env) in [
        ("guarded", "CHRONICLE_DICOM_TEST_GOOD"),
        ("guarded-bad", "CHRONICLE_DICOM_TEST_BAD"),
    ] {
        let input = json!({ "name": name, "baseUrl": source.dicomweb(),
                            "auth": { "kind": "BASIC", "secretEnv": secret_env } });
        let response = app.graphql(REGISTER, json!({ "input": input })).await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let input = json!({ "name": "research", "baseUrl": destination.dicomweb() });
    app.graphql(REGISTER, json!({ "input": input })).await;
    let listed = app
        .graphql(
            "{ dicomServers { name authKind authSecretEnv } }",
            json!({}),
        )
        .await;
    assert!(
        !listed.to_string().contains("s3cret"),
        "credentials never leave the environment"
    );

    let tasks = json!([{ "patientId": PATIENT_ID, "studyInstanceUid": STUDY_B }]);
    let good = json!({ "source": "guarded", "destination": "research" });
    let id = create(&app, good, tasks.clone()).await;
    job_when(&app, &id, "success").await;
    assert_eq!(destination.instances().await.len(), 1);

    let bad = json!({ "source": "guarded-bad", "destination": "research" });
    let id = create(&app, bad, tasks).await;
    let job = job_when(&app, &id, "failure").await;
    let message = tasks_of(&job)[0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("401"),
        "refused credentials fail at once: {message}"
    );
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%s3cret%'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(logged, 0, "no secret in the log");
}
