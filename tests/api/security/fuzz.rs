//! Hostile input at every mutation, generated from the served schema: structurally right
//! values with extreme leaves, wrong types, huge and odd strings. No call may fail with a
//! server error, and a refused call writes no event.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

use crate::support::{TestApp, TestDb, ADMIN_KEY};

const CASES_PER_MUTATION: usize = 12;

const INTROSPECTION: &str = "{ __schema {
    mutationType { fields { name args { name type { ...T } } } }
    types { name kind enumValues { name } inputFields { name type { ...T } } } }
  }
  fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name ofType { kind name } } } } }";

struct Schema {
    types: Map<String, Value>,
}

fn strings() -> Vec<String> {
    vec![
        String::new(),
        " ".into(),
        "x".repeat(200_000),
        "\u{0}".into(),
        "nul\u{0}inside".into(),
        "😀".repeat(5_000),
        "e\u{301}".repeat(3_000),
        "\u{202e}gnp.exe".into(),
        "' OR 1=1 --".into(),
        "../../etc/passwd".into(),
        "http://169.254.169.254/latest/meta-data".into(),
        "%s%n%x".into(),
        "NaN".into(),
        "-1".into(),
        "9999999999999999999999".into(),
        "2026-13-45T25:61:61Z".into(),
        "00000000-0000-0000-0000-000000000000".into(),
        "chr_0000000000000000_AAAA".into(),
    ]
}

fn deep_json(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |inner, _| json!({ "a": [inner] }))
}

fn wrong_type(rng: &mut StdRng) -> Value {
    match rng.random_range(0..7) {
        0 => json!(null),
        1 => json!(true),
        2 => json!(-1),
        3 => json!(1.5e300),
        4 => json!([1, "two", null]),
        5 => json!({ "unexpected": "field" }),
        _ => deep_json(100),
    }
}

impl Schema {
    fn value(&self, rng: &mut StdRng, ty: &Value, depth: usize) -> Value {
        if depth > 6 || rng.random_bool(0.08) {
            return wrong_type(rng);
        }
        match ty["kind"].as_str().unwrap_or_default() {
            "NON_NULL" => self.value(rng, &ty["ofType"], depth),
            "LIST" => {
                let items = rng.random_range(0..4);
                Value::Array(
                    (0..items)
                        .map(|_| self.value(rng, &ty["ofType"], depth + 1))
                        .collect(),
                )
            }
            "ENUM" => {
                let values = self.types[ty["name"].as_str().unwrap_or_default()]["enumValues"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if values.is_empty() || rng.random_bool(0.2) {
                    json!("NOT_A_VALUE")
                } else {
                    values[rng.random_range(0..values.len())]["name"].clone()
                }
            }
            "INPUT_OBJECT" => {
                let fields = self.types[ty["name"].as_str().unwrap_or_default()]["inputFields"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let mut object = Map::new();
                for field in fields {
                    if rng.random_bool(0.9) {
                        let name = field["name"].as_str().unwrap_or_default().to_owned();
                        object.insert(name, self.value(rng, &field["type"], depth + 1));
                    }
                }
                Value::Object(object)
            }
            _ => scalar(rng, ty["name"].as_str().unwrap_or_default()),
        }
    }
}

fn scalar(rng: &mut StdRng, name: &str) -> Value {
    let strings = strings();
    let any_string = strings[rng.random_range(0..strings.len())].clone();
    match name {
        "Int" => json!(
            [
                0,
                -1,
                1,
                i64::from(i32::MAX),
                i64::from(i32::MIN),
                1_i64 << 40
            ][rng.random_range(0..6)]
        ),
        "Float" => json!([0.0, -1.0, 1e308, -1e-308, 0.5][rng.random_range(0..5)]),
        "Boolean" => json!(rng.random_bool(0.5)),
        "UUID" => match rng.random_range(0..3) {
            0 => json!(uuid::Uuid::now_v7()),
            1 => json!("00000000-0000-0000-0000-000000000000"),
            _ => json!(any_string.clone()),
        },
        "DateTime" => match rng.random_range(0..3) {
            0 => json!("2026-11-23T09:00:00Z"),
            1 => json!("9999-12-31T23:59:59Z"),
            _ => json!(any_string.clone()),
        },
        "NaiveDate" => json!(["2026-11-23", "0001-01-01", "2026-02-30"][rng.random_range(0..3)]),
        "JSON" => match rng.random_range(0..3) {
            0 => deep_json(rng.random_range(1..120)),
            1 => json!({ "messages": [{ "role": "user", "content": any_string.clone() }] }),
            _ => json!(any_string.clone()),
        },
        _ => json!(any_string.clone()),
    }
}

/// The GraphQL type expression of an introspected type, e.g. `[String!]!`.
fn type_expression(ty: &Value) -> String {
    match ty["kind"].as_str().unwrap_or_default() {
        "NON_NULL" => format!("{}!", type_expression(&ty["ofType"])),
        "LIST" => format!("[{}]", type_expression(&ty["ofType"])),
        _ => ty["name"].as_str().unwrap_or_default().to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_to_every_mutation_gets_a_typed_error_and_writes_nothing() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "fuzz").await;
    let introspected = app.graphql(INTROSPECTION, json!({})).await;
    let schema = Schema {
        types: introspected["data"]["__schema"]["types"]
            .as_array()
            .expect("types")
            .iter()
            .map(|t| (t["name"].as_str().unwrap_or_default().to_owned(), t.clone()))
            .collect(),
    };
    let mutations = introspected["data"]["__schema"]["mutationType"]["fields"]
        .as_array()
        .expect("mutations")
        .clone();
    assert!(mutations.len() > 30, "{} mutations", mutations.len());
    let http = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(20261123);
    let (mut refused, mut accepted) = (0, 0);
    for mutation in &mutations {
        let name = mutation["name"].as_str().expect("name");
        let args = mutation["args"].as_array().cloned().unwrap_or_default();
        let declared: Vec<String> = args
            .iter()
            .map(|a| {
                format!(
                    "${}: {}",
                    a["name"].as_str().unwrap_or_default(),
                    type_expression(&a["type"])
                )
            })
            .collect();
        let passed: Vec<String> = args
            .iter()
            .map(|a| {
                let arg = a["name"].as_str().unwrap_or_default();
                format!("{arg}: ${arg}")
            })
            .collect();
        let document = if args.is_empty() {
            format!("mutation {{ {name} {{ __typename }} }}")
        } else {
            format!(
                "mutation({}) {{ {name}({}) {{ __typename }} }}",
                declared.join(", "),
                passed.join(", ")
            )
        };
        for case in 0..CASES_PER_MUTATION {
            let variables: Map<String, Value> = args
                .iter()
                .map(|a| {
                    let value = schema.value(&mut rng, &a["type"], 0);
                    (a["name"].as_str().unwrap_or_default().to_owned(), value)
                })
                .collect();
            let correlation = format!("fuzz-{name}-{case}");
            let response = http
                .post(format!("http://{}/graphql", app.address))
                .bearer_auth(ADMIN_KEY)
                .header("x-correlation-id", &correlation)
                .json(&json!({ "query": document, "variables": variables }))
                .send()
                .await
                .expect("the server answers");
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert!(status < 500, "{name} #{case}: HTTP {status} {body}");
            let errors = body["errors"].as_array().cloned().unwrap_or_default();
            if errors.is_empty() {
                accepted += 1;
                continue;
            }
            refused += 1;
            for error in &errors {
                let code = error["extensions"]["code"].as_str().unwrap_or_default();
                assert!(
                    !code.is_empty() && code != "INTERNAL" && code != "UNAVAILABLE",
                    "{name} #{case}: {error}"
                );
            }
            let written: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM events WHERE metadata ->> 'correlation_id' = $1",
            )
            .bind(&correlation)
            .fetch_one(&app.pool)
            .await
            .expect("count");
            assert_eq!(written, 0, "{name} #{case} was refused but wrote: {body}");
        }
    }
    assert!(refused > accepted, "refused {refused}, accepted {accepted}");
    assert_eq!(app.get("/health").await.status().as_u16(), 200);
    app.stop().await;
}
