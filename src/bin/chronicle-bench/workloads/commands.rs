//! W1–W4: commands, one at a time, concurrently, on one long stream, and in bulk.

use std::time::Instant;

use sqlx::PgPool;

use crate::client::Client;
use crate::limits::Limits;
use crate::report::{Figure, Goal};
use crate::server::{BenchDatabase, Server};
use crate::sizes::Sizes;
use crate::stats::{rate, Latencies};

/// The event one `submitRequest` appends.
const ADDED: (&str, &str) = ("Batch", "BatchRequestsAdded");
/// The event each submitted request's stream starts with.
const SUBMITTED: (&str, &str) = ("Request", "RequestSubmitted");

/// W1: one client, `submitRequest` after `submitRequest`, each a new request (aggregate) in
/// one batch; against single-row INSERT transactions of the same size on one connection.
/// Also what one command costs the database, all work it causes included: transactions
/// committed (`pg_stat_database`) from before the first command until the read models
/// caught up, per command.
pub(crate) async fn sequential(
    client: &Client,
    limits: &Limits,
    pool: &PgPool,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Figure>> {
    let count = sizes.sequential_commands;
    let bytes = limits.event_bytes(ADDED.0, ADDED.1).await?;
    let limit = limits.sequential_inserts(bytes, count).await?;
    let before = super::idle::settled_commits(pool).await?;
    let mut latencies = Latencies::default();
    let started = Instant::now();
    for n in 0..count {
        let sent = Instant::now();
        client.submit(&format!("w1-{n}"), "w1").await?;
        latencies.push(sent.elapsed());
    }
    let commands = rate(count, started.elapsed());
    client.caught_up().await?;
    let after = super::idle::settled_commits(pool).await?;
    Ok(vec![
        Figure::plain(
            format!("submitRequest, {count} sequential"),
            commands,
            "commands/s",
        )
        .limit(limit)
        .goal(Goal::RatioAtLeast(0.85)),
        Figure::plain("submitRequest p50", latencies.percentile_ms(0.5), "ms"),
        Figure::plain("submitRequest p99", latencies.percentile_ms(0.99), "ms"),
        Figure::plain(
            "commits per submitRequest, all work included",
            (after - before) as f64 / count as f64,
            "commits",
        )
        .goal(Goal::Below(2.01)),
        Figure::plain("event size (limit rows the same)", bytes as f64, "bytes"),
    ])
}

/// W2: `clients` clients submitting for the duration, each into a batch (model) of its own;
/// against the same INSERT on as many connections.
pub(crate) async fn concurrent(
    client: &Client,
    (limits, pool): (&Limits, &PgPool),
    sizes: &Sizes,
    on: Instances,
) -> anyhow::Result<Vec<Figure>> {
    let clients = sizes.concurrent_clients;
    let duration = sizes.concurrent_duration;
    let bytes = limits.event_bytes(ADDED.0, ADDED.1).await?;
    let limit = limits.concurrent_inserts(bytes, clients, duration).await?;
    let commits_before = super::idle::commits(pool).await?;
    let started = Instant::now();
    let deadline = started + duration;
    let mut senders = tokio::task::JoinSet::new();
    // Each run into batches of its own (a custom id is unique within its batch).
    let run = on.prefix();
    for sender in 0..clients {
        // Each client on one instance, the clients spread over the instances in turn.
        let client = client.nth(sender);
        senders.spawn(async move {
            let mut latencies = Latencies::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let n = latencies.len();
                client
                    .submit(&format!("{run}-{n}"), &format!("{run}-{sender}"))
                    .await?;
                latencies.push(sent.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Latencies::default();
    while let Some(done) = senders.join_next().await {
        latencies.extend(done??);
    }
    let commands = rate(latencies.len(), started.elapsed());
    let commits = super::idle::commits(pool).await? - commits_before;
    let per_commit = latencies.len() as f64 / (commits.max(1) as f64);
    let on = on.label();
    let rate = Figure::plain(
        format!("submitRequest, {clients} clients{on}"),
        commands,
        "commands/s",
    )
    .limit(limit);
    Ok(vec![
        if on.is_empty() {
            rate.goal(Goal::RatioAtLeast(0.8))
        } else {
            rate
        },
        Figure::plain(
            format!("submitRequest p50{on}"),
            latencies.percentile_ms(0.5),
            "ms",
        ),
        Figure::plain(
            format!("submitRequest p99{on}"),
            latencies.percentile_ms(0.99),
            "ms",
        ),
        Figure::plain(
            format!("commands per database commit{on}, reads included"),
            per_commit,
            "commands",
        ),
    ])
}

/// How many instances of the service W2's clients are spread over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Instances {
    One,
    Three,
}

impl Instances {
    fn prefix(self) -> &'static str {
        match self {
            Self::One => "w2",
            Self::Three => "w2-three",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::One => "",
            Self::Three => ", three instances",
        }
    }
}

/// W2 again with two more instances of the service on the same database, the clients
/// spread over all three in turn; its figures and the rate against `one`'s (one instance).
pub(crate) async fn concurrent_on_three(
    database: &BenchDatabase,
    server: &Server,
    limits: &Limits,
    sizes: &Sizes,
    one: f64,
) -> anyhow::Result<Vec<Figure>> {
    let others = [
        server.another(database).await?,
        server.another(database).await?,
    ];
    // The partitions settle among the three (they do within a second).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let client = Client::spread(&[server, &others[0], &others[1]]);
    let mut figures =
        concurrent(&client, (limits, &database.pool), sizes, Instances::Three).await?;
    for other in others {
        other.stop().await?;
    }
    let three = figures.first().map_or(0.0, |f| f.value);
    let ratio = if one > 0.0 { three / one } else { 0.0 };
    figures.push(Figure::plain("three instances / one instance", ratio, "x"));
    Ok(figures)
}

/// W3: `submitRequest` after `submitRequest` into one batch, so its stream grows to
/// thousands of events; the last window's rate against the first's (snapshots keep a
/// command's cost flat).
pub(crate) async fn long_stream(client: &Client, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let count = sizes.stream_commands;
    let window = sizes.stream_window;
    let mut first = None;
    let mut last_started = Instant::now();
    let started = Instant::now();
    for n in 0..count {
        if n == count - window {
            last_started = Instant::now();
        }
        client.submit(&format!("w3-{n}"), "w3-long").await?;
        if n + 1 == window {
            first = Some(rate(window, started.elapsed()));
        }
    }
    let last = rate(window, last_started.elapsed());
    let first = first.unwrap_or(last);
    Ok(vec![
        Figure::plain(
            format!("commands/s, last {window} (limit column: first {window})"),
            last,
            "commands/s",
        )
        .limit(first)
        .goal(Goal::RatioAtLeast(0.9)),
        Figure::plain(
            format!("commands/s, all {count} on one aggregate"),
            rate(count, started.elapsed()),
            "commands/s",
        ),
    ])
}

/// W4: `submitRequests` of `bulk_items` requests, `bulk_calls` times, into one batch;
/// requests per second against rows per second of INSERTs of as many rows each.
pub(crate) async fn bulk(
    client: &Client,
    limits: &Limits,
    sizes: &Sizes,
) -> anyhow::Result<Vec<Figure>> {
    let (calls, items) = (sizes.bulk_calls, sizes.bulk_items);
    let bytes = limits.event_bytes(SUBMITTED.0, SUBMITTED.1).await?;
    let limit = limits.bulk_inserts(bytes, items, calls).await?;
    let mut latencies = Latencies::default();
    let started = Instant::now();
    for call in 0..calls {
        let sent = Instant::now();
        client
            .submit_many(&format!("w4-{call}"), "w4", items)
            .await?;
        latencies.push(sent.elapsed());
    }
    let requests = rate(calls * items, started.elapsed());
    Ok(vec![
        Figure::plain(
            format!("requests/s, {calls} calls of {items}"),
            requests,
            "requests/s",
        )
        .limit(limit)
        .goal(Goal::RatioAtLeast(0.5)),
        Figure::plain("submitRequests p50", latencies.percentile_ms(0.5), "ms"),
        Figure::plain(
            "request event size (limit rows the same)",
            bytes as f64,
            "bytes",
        ),
    ])
}
