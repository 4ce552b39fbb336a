//! W7: list queries from concurrent clients.

use std::time::Instant;

use serde_json::json;

use crate::client::Client;
use crate::report::{Figure, Goal};
use crate::sizes::Sizes;
use crate::stats::{rate, Latencies};

const BATCHES: &str = "{ batches(first: 50) { edges { node { id status requestCount } } } }";
const REQUESTS: &str = "{ requests(filter: { model: \"w4\" }, first: 50) {
    edges { node { id customId status } } } }";

/// W7: `query_clients` clients alternating `batches(first: 50)` and `requests(filter,
/// first: 50)` for the duration.
pub(crate) async fn lists(client: &Client, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let started = Instant::now();
    let deadline = started + sizes.query_duration;
    let mut readers = tokio::task::JoinSet::new();
    for reader in 0..sizes.query_clients {
        let client = client.clone();
        readers.spawn(async move {
            let (mut batches, mut requests) = (Latencies::default(), Latencies::default());
            let mut turn = reader;
            while Instant::now() < deadline {
                let (query, latencies) = if turn % 2 == 0 {
                    (BATCHES, &mut batches)
                } else {
                    (REQUESTS, &mut requests)
                };
                let sent = Instant::now();
                client.call(query, json!({})).await?;
                latencies.push(sent.elapsed());
                turn += 1;
            }
            anyhow::Ok((batches, requests))
        });
    }
    let (mut batches, mut requests) = (Latencies::default(), Latencies::default());
    while let Some(done) = readers.join_next().await {
        let (b, r) = done??;
        batches.extend(b);
        requests.extend(r);
    }
    let queries = rate(batches.len() + requests.len(), started.elapsed());
    Ok(vec![
        Figure::plain(
            format!("queries/s, {} clients", sizes.query_clients),
            queries,
            "queries/s",
        ),
        Figure::plain("batches(first: 50) p50", batches.percentile_ms(0.5), "ms"),
        Figure::plain("batches(first: 50) p99", batches.percentile_ms(0.99), "ms")
            .goal(Goal::Below(10.0)),
        Figure::plain(
            "requests(filter, first: 50) p50",
            requests.percentile_ms(0.5),
            "ms",
        ),
        Figure::plain(
            "requests(filter, first: 50) p99",
            requests.percentile_ms(0.99),
            "ms",
        )
        .goal(Goal::Below(10.0)),
    ])
}
