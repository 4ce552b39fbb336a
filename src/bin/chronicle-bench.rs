//! `chronicle-bench`: measures Chronicle over its real HTTP API on this machine.
//!
//! Starts a server on a fresh database of the configured PostgreSQL, drives it with a reqwest
//! GraphQL client, prints a table and optionally writes JSON. Workloads:
//! - `bulk`: one `submitRequests` call of 50,000 requests less the samples below (5,000
//!   with `--quick`);
//! - `batch-latency`: single `submitRequest` latency into an empty batch and into the batch
//!   that holds the bulk requests, filling it to exactly the 50,000 limit; the two must stay
//!   close (snapshots keep a batch's load constant);
//! - `limit`: the next request opens a second batch, and the first holds exactly 50,000.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use chronicle::config::Config;
use chronicle::security::NewKey;
use chronicle::startup::{Application, Wiring};
use chronicle::{db, telemetry};
use clap::Parser;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sqlx::{ConnectOptions, Connection};

#[derive(Debug, Parser)]
#[command(about = "Benchmark Chronicle over its GraphQL API")]
struct Cli {
    #[command(flatten)]
    config: Config,
    /// Smaller workloads, for a quick look.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Single submissions timed per batch in `batch-latency`.
    #[arg(long, default_value_t = 300)]
    samples: usize,
}

struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl Client {
    async fn graphql(&self, query: &str, variables: Value) -> anyhow::Result<Value> {
        let response: Value = self
            .http
            .post(&self.url)
            .bearer_auth(&self.key)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await?
            .json()
            .await?;
        ensure!(
            response["errors"].is_null(),
            "GraphQL error: {}",
            response["errors"]
        );
        Ok(response)
    }
}

fn item(custom_id: &str, model: &str) -> Value {
    json!({
        "customId": custom_id,
        "endpoint": "/v1/chat/completions",
        "model": model,
        "body": { "model": model, "messages": [{ "role": "user", "content": "Say hello." }] },
        "delivery": { "poll": true },
    })
}

const SUBMIT_MANY: &str = "mutation($requests: [SubmitRequestInput!]!) {
    submitRequests(requests: $requests) { requestId } }";
const SUBMIT_ONE: &str = "mutation($input: SubmitRequestInput!) {
    submitRequest(input: $input) { requestId } }";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn single_latencies(client: &Client, model: &str, samples: usize) -> anyhow::Result<Value> {
    let mut took = Vec::with_capacity(samples);
    for i in 0..samples {
        let started = Instant::now();
        client
            .graphql(
                SUBMIT_ONE,
                json!({ "input": item(&format!("single-{i}"), model) }),
            )
            .await?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok(json!({
        "samples": samples,
        "p50_ms": percentile(&took, 0.5),
        "p99_ms": percentile(&took, 0.99),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs only: the bench's own spans are not exported.
    drop(telemetry::init(cli.config.log_format, None)?);
    let limit = if cli.quick { 5_000 } else { 50_000 };
    ensure!(
        cli.samples < limit,
        "--samples must be below the batch limit"
    );
    let bulk = limit - cli.samples;
    let server = db::connect_options(&cli.config.database_url)?;
    let name = format!("chronicle_bench_{}", std::process::id());
    let options = server.clone().database(&name);
    let pool = db::connect(&options, cli.config.db_max_connections).await?;
    db::migrate(&pool).await?;
    let mut config = cli.config.clone();
    config.listen = "127.0.0.1:0".parse()?;
    config.batch_max_requests = limit as u64;
    // The bench measures throughput: no rate limit; its own admin key on the fresh database.
    config.security.rate_limit_per_sec = 0;
    config.security.insecure_dev = false;
    let key = NewKey::generate().token;
    config.security.bootstrap_admin_key = Some(key.clone());
    let app = Application::build(&config, pool.clone(), options, Wiring::standard()).await?;
    let client = Client {
        http: reqwest::Client::new(),
        url: format!("http://{}/graphql", app.local_addr()?),
        key: key.expose_secret().to_owned(),
    };
    let shutdown = app.shutdown_token();
    let server_task = tokio::spawn(app.run_until_stopped());

    eprintln!("bulk: submitting {bulk} requests in one call ...");
    let items: Vec<Value> = (0..bulk)
        .map(|i| item(&format!("bulk-{i}"), "big"))
        .collect();
    let started = Instant::now();
    client
        .graphql(SUBMIT_MANY, json!({ "requests": items }))
        .await?;
    let bulk_seconds = started.elapsed().as_secs_f64();

    eprintln!(
        "batch-latency: {} single submissions per batch ...",
        cli.samples
    );
    let empty = single_latencies(&client, "small", cli.samples).await?;
    let full = single_latencies(&client, "big", cli.samples).await?;

    eprintln!("limit: one request beyond {limit} ...");
    let overflow = client
        .graphql(
            "mutation($input: SubmitRequestInput!) { submitRequest(input: $input) { batchId } }",
            json!({ "input": item("overflow", "big") }),
        )
        .await?;
    let second = overflow["data"]["submitRequest"]["batchId"].clone();
    // The read model follows the log: give it until the deadline to show the closed batch.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (full_batch, limit_ok) = loop {
        let batches = client
            .graphql(
                "{ batches(filter: { model: \"big\" }) { edges { node { id requestCount status } } } }",
                json!({}),
            )
            .await?;
        let full_batch = batches["data"]["batches"]["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|edge| &edge["node"])
            .find(|node| node["id"] != second)
            .cloned()
            .unwrap_or_default();
        let ok = full_batch["requestCount"] == limit && full_batch["status"] == "uploading";
        if ok || Instant::now() > deadline {
            break (full_batch, ok);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let results = json!({
        "bulk": { "requests": bulk, "seconds": bulk_seconds,
                  "requests_per_second": bulk as f64 / bulk_seconds },
        "batch_latency": { "empty_batch": empty, "batch_with_bulk": full,
                           "bulk_requests_in_batch": bulk,
                           "p50_ratio": full["p50_ms"].as_f64().unwrap_or(0.0)
                               / empty["p50_ms"].as_f64().unwrap_or(f64::EPSILON).max(f64::EPSILON) },
        "limit": { "max_requests": limit, "first_batch": full_batch, "next_batch": second,
                   "holds": limit_ok },
    });
    let table = format!(
        "workload        measure                                  value\n\
         bulk            {bulk} requests, one call (s)          {:>10.2}\n\
         bulk            requests/s                               {:>10.0}\n\
         batch-latency   submitRequest p50, empty batch (ms)      {:>10.2}\n\
         batch-latency   submitRequest p99, empty batch (ms)      {:>10.2}\n\
         batch-latency   submitRequest p50, batch of {bulk} (ms) {:>10.2}\n\
         batch-latency   submitRequest p99, batch of {bulk} (ms) {:>10.2}\n\
         limit           batch 1 closed at exactly {limit}, next opened  {:>10}\n",
        bulk_seconds,
        bulk as f64 / bulk_seconds,
        empty["p50_ms"].as_f64().unwrap_or(0.0),
        empty["p99_ms"].as_f64().unwrap_or(0.0),
        full["p50_ms"].as_f64().unwrap_or(0.0),
        full["p99_ms"].as_f64().unwrap_or(0.0),
        if limit_ok { "yes" } else { "NO" },
    );
    std::io::Write::write_all(&mut std::io::stdout(), table.as_bytes())?;
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }

    ensure!(limit_ok, "the batch limit did not hold: {full_batch}");
    shutdown.cancel();
    server_task.await??;
    pool.close().await;
    let mut admin = server.database("postgres").connect().await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    Ok(())
}
