//! `chronicle-bench`: measures Chronicle over its real API, each figure next to the limit of
//! the PostgreSQL it runs on, measured in the same run right before the workload.
//!
//! The bench starts the service as a child process (this binary runs `chronicle` when its
//! first argument is [`server::CHILD`]) on a fresh database, drives it with GraphQL over HTTP
//! and websockets, samples the child's resident memory, prints a table and writes JSON.
//! Workloads W1–W7 are described in [`workloads`]; the README's performance section quotes a
//! full run.

mod client;
mod limits;
mod report;
mod server;
mod sizes;
mod stats;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::report::Report;
use crate::sizes::Sizes;
use crate::workloads::Workload;

#[derive(Debug, Parser)]
#[command(about = "Benchmark Chronicle against the limits of its PostgreSQL, in one run")]
struct Cli {
    /// The PostgreSQL server; the bench creates (and drops) a database of its own on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    /// Smaller workloads (under two minutes).
    #[arg(long)]
    quick: bool,
    /// Multiply every count and duration (e.g. 0.02 for a smoke run).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Run only these workloads, e.g. `W1,W4`.
    #[arg(long, value_delimiter = ',')]
    workload: Vec<Workload>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the bench database afterwards (to inspect it).
    #[arg(long)]
    keep_database: bool,
}

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chronicle-bench: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match server::child_arguments() {
        Some(arguments) => runtime.block_on(server::run_child(arguments)),
        None => runtime.block_on(bench(Cli::parse())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chronicle-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let sizes = Sizes::new(cli.quick, cli.scale)?;
    let selected = if cli.workload.is_empty() {
        Workload::ALL.to_vec()
    } else {
        cli.workload.clone()
    };
    let database = server::BenchDatabase::create(&cli.database_url).await?;
    let outcome = workloads::run_all(&database, &sizes, &selected).await;
    let report = match outcome {
        Ok(results) => Report::new(&database, &sizes, results).await?,
        Err(error) => {
            database.drop_unless(cli.keep_database).await?;
            return Err(error);
        }
    };
    std::io::Write::write_all(&mut std::io::stdout(), report.table().as_bytes())?;
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report.json())?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    database.drop_unless(cli.keep_database).await
}
