//! What operators watch: `/metrics` agrees with the store after a mixed workload, every series
//! names its instance, roles show who holds them, and the shipped alert rules are valid and
//! name only metrics the service serves.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::json;

use crate::delivery::{app_with_provider, batch_when, submit, webhook};
use crate::support::{error_code, Behaviour, Receiver, Scrape, TestDb};

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/ops/prometheus/chronicle.rules.yml"
);

async fn counted(db: &TestDb, sql: &str) -> BTreeMap<String, f64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql)
        .fetch_all(&db.pool)
        .await
        .expect("store counts");
    rows.into_iter()
        .map(|(labels, count)| (labels, count as f64))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_agree_with_the_store_and_roles_name_their_instance() {
    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let (batch_id, _) = submit(&app, &[webhook(&receiver.url)]).await;
    batch_when(&app, &batch_id, "done").await;
    let one = "mutation($i: SubmitRequestInput!) { submitRequest(input: $i) { requestId } }";
    for (custom_id, model) in [("x1", "other-model"), ("x2", "other-model")] {
        let input = json!({ "customId": custom_id, "endpoint": "/v1/chat/completions",
                            "model": model, "delivery": { "poll": true },
                            "body": { "messages": [{ "role": "user", "content": "hi" }] } });
        let response = app.graphql(one, json!({ "i": input })).await;
        assert!(response["errors"].is_null(), "{response}");
    }
    let missing = "mutation { cancelRequest(requestId: \"00000000-0000-0000-0000-000000000000\") { version } }";
    assert_eq!(
        error_code(&app.graphql(missing, json!({})).await),
        "NOT_FOUND"
    );
    crate::archive::caught_up(&db.pool).await;
    let scrape = Scrape::of(&app).await;

    assert_eq!(scrape.instances, BTreeSet::from(["delivery".to_owned()]));
    let events = counted(
        &db,
        "SELECT format('aggregate=\"%s\"', aggregate_type), count(*) FROM events GROUP BY 1",
    )
    .await;
    assert_eq!(scrape.of_metric("chronicle_events_appended_total"), events);
    let requests = counted(
        &db,
        "SELECT format('client=\"%s\",model=\"%s\"', owner, model), count(*) FROM requests
          GROUP BY 1",
    )
    .await;
    assert_eq!(
        scrape.of_metric("chronicle_requests_submitted_total"),
        requests
    );
    let tokens = counted(
        &db,
        "SELECT format('client=\"%s\",kind=\"%s\",model=\"%s\"', owner, kind, model),
                sum(n)::bigint
           FROM analytics.usage_daily,
                LATERAL (VALUES ('input', input_tokens), ('output', output_tokens)) t(kind, n)
          GROUP BY 1 HAVING sum(n) > 0",
    )
    .await;
    let scraped: BTreeMap<String, f64> = scrape
        .of_metric("chronicle_tokens_total")
        .into_iter()
        .filter(|(_, count)| *count > 0.0)
        .collect();
    assert!(!tokens.is_empty(), "the provider's results carry usage");
    assert_eq!(scraped, tokens);
    // The shipped price table has no price for the emulator's model `m`.
    for (metric, column) in [
        ("chronicle_unpriced_results_total", "unpriced"),
        ("chronicle_cost_nanodollars_total", "cost_nano_usd"),
    ] {
        let stored = counted(
            &db,
            &format!(
                "SELECT format('client=\"%s\",model=\"%s\"', owner, model), sum({column})::bigint
                   FROM analytics.usage_daily GROUP BY 1 HAVING sum({column}) > 0"
            ),
        )
        .await;
        let scraped: BTreeMap<String, f64> = scrape
            .of_metric(metric)
            .into_iter()
            .filter(|(_, count)| *count > 0.0)
            .collect();
        assert_eq!(scraped, stored, "{metric}");
    }
    assert!(
        scrape
            .of_metric("chronicle_unpriced_results_total")
            .values()
            .sum::<f64>()
            > 0.0
    );
    let mutations = scrape.of_metric("chronicle_mutations_total");
    let expected: BTreeMap<String, f64> = [
        ("mutation=\"submitRequests\",outcome=\"ok\"", 1.0),
        ("mutation=\"flushBatch\",outcome=\"ok\"", 1.0),
        ("mutation=\"submitRequest\",outcome=\"ok\"", 2.0),
        ("mutation=\"cancelRequest\",outcome=\"NOT_FOUND\"", 1.0),
    ]
    .into_iter()
    .map(|(labels, count)| (labels.to_owned(), count))
    .collect();
    assert_eq!(mutations, expected);

    // Every role and every partition is held, by this instance, in the metrics and in the
    // API.
    let held = scrape.of_metric("chronicle_role_held");
    assert!(!held.is_empty());
    assert_eq!(held, scrape.of_metric("chronicle_role_partitions"));
    let roles = app
        .graphql(
            "{ roles { role instance since partitions { partition instance } } }",
            json!({}),
        )
        .await;
    let listed = roles["data"]["roles"].as_array().expect("roles");
    assert_eq!(listed.len(), held.len(), "{roles}");
    for role in listed {
        let partitions = role["partitions"].as_array().expect("partitions");
        if partitions.is_empty() {
            assert_eq!(role["instance"], "delivery", "{role}");
        } else {
            assert!(
                partitions.iter().all(|p| p["instance"] == "delivery"),
                "{role}"
            );
        }
        let labels = format!("role=\"{}\"", role["role"].as_str().expect("role"));
        let count = partitions.len().max(1) as f64;
        assert_eq!(held.get(&labels), Some(&count), "{labels}");
    }
    let instances = app
        .graphql(
            "{ instances { name roles partitions { role partitions } } }",
            json!({}),
        )
        .await;
    let live = instances["data"]["instances"]
        .as_array()
        .expect("instances");
    assert_eq!(live.len(), 1, "{instances}");
    assert_eq!(live[0]["name"], "delivery");
    let delivery = live[0]["partitions"]
        .as_array()
        .and_then(|held| held.iter().find(|h| h["role"] == "delivery"))
        .expect("delivery partitions");
    assert_eq!(delivery["partitions"], json!((0..32).collect::<Vec<i32>>()));
    let client = app.client_key("watcher", "CLIENT").await;
    let refused = app
        .graphql_as(&client, "{ roles { role } }", json!({}))
        .await;
    assert_eq!(error_code(&refused), "FORBIDDEN");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alert_rules_are_valid_and_name_only_served_metrics() {
    let rules = std::fs::read_to_string(RULES).expect("rules file");
    check_with_promtool();

    let db = TestDb::new().await;
    let app = app_with_provider(&db, |_| {}).await;
    let receiver = Receiver::start(Behaviour::Accept).await;
    let (batch_id, _) = submit(&app, &[webhook(&receiver.url)]).await;
    batch_when(&app, &batch_id, "done").await;
    let served = Scrape::of(&app).await.names();
    let named: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("chronicle_"))
        .map(str::to_owned)
        .collect();
    assert!(named.len() >= 6, "{named:?}");
    for name in &named {
        let histogram = format!("{name}_bucket");
        assert!(
            served.contains(name) || served.contains(&histogram),
            "the rules name {name}, which /metrics does not serve: {served:?}"
        );
    }
    app.stop().await;
}

/// `promtool check rules` over the shipped file. CI installs promtool and must run it;
/// elsewhere it runs when promtool is on the PATH.
fn check_with_promtool() {
    let checked = std::process::Command::new("promtool")
        .args(["check", "rules", RULES])
        .output();
    match checked {
        Ok(output) => assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(error) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must check the rules with promtool: {error}"
            );
            eprintln!("promtool is not installed here ({error}); the rules were not checked by it");
        }
    }
}
