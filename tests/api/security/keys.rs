//! API keys: required, shown once, stored as a keyed hash, revoked at once; admin-only
//! client management; the per-client rate limit.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{error_code as code, eventually, TestApp, TestDb, ADMIN_KEY};

const ME: &str = "{ me { clientId role } }";

async fn post(app: &TestApp, authorization: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = authorization
        .map(|v| ("Authorization", v))
        .into_iter()
        .collect();
    app.post_with(&headers, ME, json!({})).await
}

#[tokio::test]
async fn calls_without_a_valid_key_are_unauthenticated_and_the_open_routes_stay_open() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "keys").await;
    let wrong_secret = format!("{}x", &ADMIN_KEY[..ADMIN_KEY.len() - 1]);
    for authorization in [
        None,
        Some("Bearer "),
        Some("Basic YWRtaW46YWRtaW4="),
        Some("Bearer chr_0000000000000000_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        Some(&format!("Bearer {wrong_secret}")),
    ] {
        let (status, response) = post(&app, authorization).await;
        assert_eq!(status, 401, "{authorization:?}: {response}");
        assert_eq!(code(&response), "UNAUTHENTICATED", "{response}");
    }
    let (status, me) = post(&app, Some(&format!("Bearer {ADMIN_KEY}"))).await;
    assert_eq!(status, 200);
    assert_eq!(
        me["data"]["me"],
        json!({ "clientId": "admin", "role": "ADMIN" })
    );
    for open in ["/health", "/ready", "/graphql"] {
        assert_eq!(app.get(open).await.status().as_u16(), 200, "{open}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_key_is_shown_once_kept_as_a_hash_and_stops_working_when_revoked() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "keys").await;
    let key = app.client_key("acme", "CLIENT").await;
    let me = app.graphql_as(&key, ME, json!({})).await;
    assert_eq!(
        me["data"]["me"],
        json!({ "clientId": "acme", "role": "CLIENT" })
    );

    // Neither the log nor any table holds the key's secret.
    // `chr_<key id>_<secret>`: the secret itself may hold `_`.
    let secret = key.splitn(3, '_').nth(2).expect("secret part");
    let leaks: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0)
              + (SELECT count(*) FROM api_keys WHERE strpos(hash, $1) > 0)",
    )
    .bind(secret)
    .fetch_one(&app.pool)
    .await
    .expect("search");
    assert_eq!(leaks, 0);

    // A client may not manage clients.
    for mutation in [
        "mutation { createClient(id: \"other\") { version } }",
        "mutation { issueKey(clientId: \"acme\") { key } }",
        "mutation { rotateWebhookSecret(clientId: \"acme\") { secret } }",
        "{ clients { id } }",
    ] {
        let refused = app.graphql_as(&key, mutation, json!({})).await;
        assert_eq!(code(&refused), "FORBIDDEN", "{mutation}: {refused}");
    }

    let listed = app
        .graphql(
            "{ client(id: \"acme\") { role keys { keyId label revokedAt } } }",
            json!({}),
        )
        .await;
    let key_id = listed["data"]["client"]["keys"][0]["keyId"]
        .as_str()
        .unwrap_or_else(|| panic!("{listed}"))
        .to_owned();
    assert!(key.starts_with(&format!("chr_{key_id}_")));
    let revoke =
        "mutation($c: String!, $k: String!) { revokeKey(clientId: $c, keyId: $k) { version } }";
    let revoked = app
        .graphql(revoke, json!({ "c": "acme", "k": key_id }))
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    let after = app.graphql_as(&key, ME, json!({})).await;
    assert_eq!(code(&after), "UNAUTHENTICATED", "revoked at once: {after}");
    let again = app
        .graphql(revoke, json!({ "c": "acme", "k": key_id }))
        .await;
    assert_eq!(code(&again), "INVALID_TRANSITION", "{again}");

    // Creating a taken id, or an id that is not a slug, is refused.
    for (id, expected) in [
        ("acme", "CONFLICT"),
        ("Not A Slug", "VALIDATION"),
        ("system", "VALIDATION"),
    ] {
        let refused = app
            .graphql(
                "mutation($id: String!) { createClient(id: $id) { version } }",
                json!({ "id": id }),
            )
            .await;
        assert_eq!(code(&refused), expected, "{id}: {refused}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_webhook_secret_replaces_the_old_one() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "keys").await;
    let key = app.client_key("acme", "CLIENT").await;
    let before = app.graphql_as(&key, "{ webhookSecret }", json!({})).await;
    let rotated = app
        .graphql(
            "mutation { rotateWebhookSecret(clientId: \"acme\") { secret } }",
            json!({}),
        )
        .await;
    let after = app.graphql_as(&key, "{ webhookSecret }", json!({})).await;
    assert_eq!(
        after["data"]["webhookSecret"],
        rotated["data"]["rotateWebhookSecret"]["secret"]
    );
    assert_ne!(
        after["data"]["webhookSecret"],
        before["data"]["webhookSecret"]
    );
    let missing = app
        .graphql(
            "mutation { rotateWebhookSecret(clientId: \"nobody\") { secret } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&missing), "NOT_FOUND", "{missing}");
    app.stop().await;
}

#[tokio::test]
async fn mutations_past_a_clients_rate_limit_are_refused_and_others_go_on() {
    let db = TestDb::new().await;
    let app = TestApp::spawn_configured(&db, "limits", |c| {
        c.security.rate_limit_per_sec = 1;
        c.security.rate_limit_burst = 3;
    })
    .await;
    let key = app.client_key("acme", "CLIENT").await;
    let field = |alias: &str| {
        format!(
            "{alias}: flushBatch(batchId: \"00000000-0000-7000-8000-000000000000\") {{ version }}"
        )
    };
    let one = format!("mutation {{ {} }}", field("a"));
    let mut codes = Vec::new();
    for _ in 0..6 {
        let response = app.graphql_as(&key, &one, json!({})).await;
        codes.push(code(&response).to_owned());
    }
    // The burst passes (to the resolver, which finds no such batch); then the bucket is
    // empty and refills at one per second, far slower than these calls.
    assert_eq!(codes[..3], ["NOT_FOUND"; 3], "{codes:?}");
    assert!(codes[3..].iter().any(|c| c == "RATE_LIMITED"), "{codes:?}");
    // Each mutation of a document costs one: four at once exceed a burst of three.
    let four = format!(
        "mutation {{ {} }}",
        ["a", "b", "c", "d"].map(field).join(" ")
    );
    let refused = app.graphql(&four, json!({})).await;
    assert_eq!(code(&refused), "RATE_LIMITED", "{refused}");
    assert!(refused["errors"][0]["extensions"]["retryAfterMs"]
        .as_u64()
        .is_some());
    // Queries are not limited.
    let me = app.graphql_as(&key, ME, json!({})).await;
    assert!(me["errors"].is_null(), "{me}");
    // Refused mutations are counted by name with their code, each field of a document.
    let metrics = app.get("/metrics").await.text().await.expect("metrics");
    let refused_flushes = metrics
        .lines()
        .find(|l| l.contains("mutation=\"flushBatch\"") && l.contains("RATE_LIMITED"))
        .and_then(|l| l.rsplit_once(' ')?.1.parse::<u32>().ok());
    let codes_refused = codes.iter().filter(|c| *c == "RATE_LIMITED").count();
    assert_eq!(
        refused_flushes,
        u32::try_from(codes_refused + 4).ok(),
        "{metrics}"
    );
    app.stop().await;
}

/// The instance count each instance sees, from its `/metrics`.
async fn instances_seen(app: &TestApp) -> Option<u32> {
    let text = app.get("/metrics").await.text().await.ok()?;
    let line = text
        .lines()
        .find(|line| line.starts_with("chronicle_instances_live"))?;
    line.rsplit_once(' ')?.1.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_gets_about_its_rate_through_three_instances_not_three_times_it() {
    let db = TestDb::new().await;
    let limited = |c: &mut chronicle::config::Config| {
        c.security.rate_limit_per_sec = 5;
        c.security.rate_limit_burst = 5;
    };
    let mut apps = Vec::new();
    for name in ["one", "two", "three"] {
        apps.push(TestApp::spawn_configured(&db, name, limited).await);
    }
    let key = apps[0].client_key("spread", "CLIENT").await;
    let flush =
        "mutation { flushBatch(batchId: \"00000000-0000-7000-8000-000000000000\") { version } }";
    // A limiter in use has the instances counted (an idle instance counts nothing): one
    // call to each, then every instance has counted three.
    for app in &apps {
        app.graphql_as(&key, flush, json!({})).await;
    }
    eventually(
        Duration::from_secs(10),
        "three instances counted",
        || async { (instances_seen(&apps[0]).await == Some(3)).then_some(()) },
    )
    .await;
    let (mut passed, mut refused) = (0, 0);
    let started = std::time::Instant::now();
    for app in apps.iter().cycle() {
        if started.elapsed() >= Duration::from_secs(2) {
            break;
        }
        match code(&app.graphql_as(&key, flush, json!({})).await) {
            "RATE_LIMITED" => refused += 1,
            "NOT_FOUND" => passed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    // 5/s with a burst of 5 over 2 s is 15; each instance enforces a third rounded up (2/s,
    // burst 2): at most 18 together. Unsplit, three instances would pass up to 45.
    assert!(
        (5..=18).contains(&passed),
        "{passed} passed, {refused} refused"
    );
    assert!(refused > passed, "{passed} passed, {refused} refused");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_key_from_keys_new_bootstraps_the_admin_once() {
    let made = std::process::Command::new(env!("CARGO_BIN_EXE_chronicle"))
        .args(["keys", "new"])
        .output()
        .expect("run chronicle keys new");
    assert!(made.status.success());
    let key = String::from_utf8(made.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    let parts: Vec<&str> = key.splitn(3, '_').collect();
    assert_eq!(parts.len(), 3, "{key}");
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len()),
        ("chr", 16, 43),
        "{key}"
    );

    let db = TestDb::new().await;
    let bootstrap = key.clone();
    let app = TestApp::spawn_configured(&db, "bootstrap", move |c| {
        c.security.bootstrap_admin_key = Some(bootstrap.into());
    })
    .await;
    let me = app.graphql_as(&key, ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "ADMIN", "{me}");
    assert_eq!(code(&app.graphql(ME, json!({})).await), "UNAUTHENTICATED");
    app.stop().await;
    // A second start with another bootstrap key installs nothing.
    let app = TestApp::spawn(&db, "bootstrap").await;
    assert_eq!(code(&app.graphql(ME, json!({})).await), "UNAUTHENTICATED");
    let me = app.graphql_as(&key, ME, json!({})).await;
    assert_eq!(me["data"]["me"]["clientId"], "admin", "{me}");
    app.stop().await;
}

#[tokio::test]
async fn a_key_revoked_through_one_instance_stops_working_on_another_that_kept_it() {
    let db = TestDb::new().await;
    let (first, second) = (
        TestApp::spawn(&db, "keys-a").await,
        TestApp::spawn(&db, "keys-b").await,
    );
    let key = first.client_key("acme", "CLIENT").await;
    // The second instance reads the key once and keeps it.
    for _ in 0..3 {
        let me = second.graphql_as(&key, ME, json!({})).await;
        assert_eq!(me["data"]["me"]["clientId"], "acme", "{me}");
    }
    let listed = first
        .graphql("{ client(id: \"acme\") { keys { keyId } } }", json!({}))
        .await;
    let key_id = listed["data"]["client"]["keys"][0]["keyId"].clone();
    let revoke =
        "mutation($c: String!, $k: String!) { revokeKey(clientId: $c, keyId: $k) { version } }";
    let revoked = first
        .graphql(revoke, json!({ "c": "acme", "k": key_id }))
        .await;
    assert!(revoked["errors"].is_null(), "{revoked}");
    // The revocation reaches the second instance through the log, well before a kept key
    // would be read again anyway (five seconds).
    eventually(
        std::time::Duration::from_secs(3),
        "refused on the other instance",
        || async {
            let after = second.graphql_as(&key, ME, json!({})).await;
            (code(&after) == "UNAUTHENTICATED").then_some(())
        },
    )
    .await;
    first.stop().await;
    second.stop().await;
}
