//! The workloads, run in one go against one service and one database:
//! - W0 the service idle ([`idle`]);
//! - W1 sequential commands, W2 concurrent commands, W3 a long stream, W4 bulk ingest
//!   ([`commands`]);
//! - W5 a projection rebuild ([`rebuild`]), run last because it stops the service;
//! - W6 live latency to the read model and to a subscriber ([`live`]);
//! - W7 list queries ([`queries`]).

mod commands;
mod idle;
mod live;
mod queries;
mod rebuild;

use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::client::Client;
use crate::limits::Limits;
use crate::report::{Figure, Outcome};
use crate::server::{BenchDatabase, Server};
use crate::sizes::Sizes;
use commands::Instances;

/// One workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Workload {
    /// The service idle.
    #[value(name = "W0", alias = "w0")]
    W0,
    /// Sequential commands.
    #[value(name = "W1", alias = "w1")]
    W1,
    /// Concurrent commands.
    #[value(name = "W2", alias = "w2")]
    W2,
    /// A long stream.
    #[value(name = "W3", alias = "w3")]
    W3,
    /// Bulk ingest.
    #[value(name = "W4", alias = "w4")]
    W4,
    /// Projection rebuild.
    #[value(name = "W5", alias = "w5")]
    W5,
    /// Live latency.
    #[value(name = "W6", alias = "w6")]
    W6,
    /// Queries.
    #[value(name = "W7", alias = "w7")]
    W7,
}

impl Workload {
    /// Every workload, in order.
    pub(crate) const ALL: [Self; 8] = [
        Self::W0,
        Self::W1,
        Self::W2,
        Self::W3,
        Self::W4,
        Self::W5,
        Self::W6,
        Self::W7,
    ];

    fn id(self) -> &'static str {
        match self {
            Self::W0 => "W0",
            Self::W1 => "W1",
            Self::W2 => "W2",
            Self::W3 => "W3",
            Self::W4 => "W4",
            Self::W5 => "W5",
            Self::W6 => "W6",
            Self::W7 => "W7",
        }
    }

    fn title(self, sizes: &Sizes) -> String {
        match self {
            Self::W0 => format!(
                "idle: the service after its warm-up, watched for {:?}",
                sizes.idle_duration
            ),
            Self::W1 => format!(
                "sequential commands: {} submitRequest, one client",
                sizes.sequential_commands
            ),
            Self::W2 => format!(
                "concurrent commands: {} clients for {:?}, on one instance, then spread over three",
                sizes.concurrent_clients, sizes.concurrent_duration
            ),
            Self::W3 => format!(
                "long stream: {} commands on one batch",
                sizes.stream_commands
            ),
            Self::W4 => format!(
                "bulk ingest: {} submitRequests of {}",
                sizes.bulk_calls, sizes.bulk_items
            ),
            Self::W5 => format!(
                "projection rebuild: requests and batches from {} and {} events",
                sizes.rebuild_events_small, sizes.rebuild_events
            ),
            Self::W6 => format!(
                "live latency at {} commands/s, then at half W2's rate, {:?} each",
                sizes.live_rate, sizes.live_duration
            ),
            Self::W7 => format!(
                "queries: {} clients for {:?}",
                sizes.query_clients, sizes.query_duration
            ),
        }
    }
}

/// Commands that warm the service up and give the limits real event sizes.
const WARM_UP: usize = 20;

/// Runs `selected` (W5 last) on a service started on `database`; the outcomes in W order.
pub(crate) async fn run_all(
    database: &BenchDatabase,
    sizes: &Sizes,
    selected: &[Workload],
) -> anyhow::Result<Vec<Outcome>> {
    let limits = Limits::new(&database.pool).await?;
    let server = Server::start(database).await?;
    let client = Client::new(&server);
    for n in 0..WARM_UP {
        client.submit("warm-up", &format!("warm-up-{n}")).await?;
    }
    client.caught_up().await?;
    let mut outcomes = Vec::new();
    // What the service sustains (W2's throughput): W6 also runs at half of it.
    let mut sustained = None;
    for &workload in selected.iter().filter(|w| **w != Workload::W5) {
        let title = workload.title(sizes);
        eprintln!("{}: {title} ...", workload.id());
        server.memory.take_peak();
        let started = Instant::now();
        let mut figures = match workload {
            Workload::W0 => idle::idle(&database.pool, sizes).await?,
            Workload::W1 => commands::sequential(&client, &limits, &database.pool, sizes).await?,
            Workload::W2 => {
                let mut figures =
                    commands::concurrent(&client, (&limits, &database.pool), sizes, Instances::One)
                        .await?;
                let one = figures.first().map_or(0.0, |f| f.value);
                let three =
                    commands::concurrent_on_three(database, &server, &limits, sizes, one).await?;
                figures.extend(three);
                figures
            }
            Workload::W3 => commands::long_stream(&client, sizes).await?,
            Workload::W4 => commands::bulk(&client, &limits, sizes).await?,
            Workload::W6 => {
                let steady = sustained.map_or(100.0, |rate: f64| rate / 2.0);
                let steady = (steady.round() as u32).clamp(10, sizes.live_rate);
                let mut figures = Vec::new();
                // Phases apart by name: both may ask the same rate.
                for (phase, rate) in [sizes.live_rate, steady].into_iter().enumerate() {
                    let run = live::Run { phase, rate };
                    let pool = &database.pool;
                    figures.extend(live::latency(&server, &client, pool, sizes, run).await?);
                    client.caught_up().await?;
                }
                figures
            }
            Workload::W7 => {
                // Statistics as autovacuum keeps them on a steady database (the ingest
                // workloads have just grown the tables many times over).
                sqlx::query("ANALYZE requests, batches")
                    .execute(&database.pool)
                    .await?;
                queries::lists(&client, sizes).await?
            }
            Workload::W5 => Vec::new(),
        };
        if workload == Workload::W2 {
            sustained = figures.first().map(|figure| figure.value);
        }
        let peak = server.memory.take_peak();
        let seconds = started.elapsed();
        // The next workload starts on a quiet service: the read models have caught up.
        let behind = client.caught_up().await?;
        figures.push(Figure::plain(
            "read models caught up after the workload",
            behind.as_secs_f64(),
            "s",
        ));
        outcomes.push(finished(workload, title, figures, peak, seconds));
    }
    if selected.contains(&Workload::W5) {
        let title = Workload::W5.title(sizes);
        eprintln!("W5: {title} ...");
        let started = Instant::now();
        rebuild::prepare(&client, sizes).await?;
        server.stop().await?;
        let (figures, peak) = rebuild::rebuild(database, &limits, sizes).await?;
        outcomes.push(finished(
            Workload::W5,
            title,
            figures,
            peak,
            started.elapsed(),
        ));
    } else {
        server.stop().await?;
    }
    outcomes.sort_by_key(|outcome| outcome.id);
    Ok(outcomes)
}

fn finished(
    workload: Workload,
    title: String,
    figures: Vec<Figure>,
    peak_rss_bytes: u64,
    took: Duration,
) -> Outcome {
    let seconds = took.as_secs_f64();
    eprintln!("{}: done in {seconds:.1} s", workload.id());
    Outcome {
        id: workload.id(),
        title,
        figures,
        peak_rss_bytes,
        seconds,
    }
}
