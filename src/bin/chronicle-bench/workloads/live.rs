//! W6: at a steady command rate, how long until a command's effect shows in the read model
//! and reaches a subscriber.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures::StreamExt;
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::client::{subscribe, Client};
use crate::report::{Figure, Goal};
use crate::server::Server;
use crate::sizes::Sizes;
use crate::stats::{rate, Latencies};

/// When each request id was seen (acknowledged, in the read model, at the subscriber).
type Seen = Arc<Mutex<HashMap<Uuid, Instant>>>;

fn note(seen: &Seen, id: Uuid, at: Instant) {
    seen.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(id)
        .or_insert(at);
}

fn snapshot(seen: &Seen) -> HashMap<Uuid, Instant> {
    seen.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// Batches (models) the commands are spread over, so that they seldom race for one.
const BATCHES: usize = 64;
/// Commands in flight at most; past it the rate is not held and the bench says so.
const IN_FLIGHT: usize = 256;
/// How often the read model is polled.
const POLL: Duration = Duration::from_millis(2);
/// How long the bench waits for the last effects after the last command.
const SETTLE: Duration = Duration::from_secs(30);

/// One phase of W6: its number (which names its batches and custom ids) and its rate.
pub(crate) struct Run {
    pub(crate) phase: usize,
    pub(crate) rate: u32,
}

/// W6: `submitRequest` at the run's rate per second (over [`BATCHES`] batches) for the
/// duration, with a `requestsUpdated` subscriber and a poller of the `requests` table.
pub(crate) async fn latency(
    server: &Server,
    client: &Client,
    pool: &PgPool,
    sizes: &Sizes,
    Run {
        phase,
        rate: rate_asked,
    }: Run,
) -> anyhow::Result<Vec<Figure>> {
    let (acked, modelled, pushed): (Seen, Seen, Seen) = Default::default();
    let stop = CancellationToken::new();
    let listener = listen(server, pushed.clone(), stop.clone()).await?;
    // The subscription is live once it delivers an update for a probe request.
    let probe = format!("w6-{phase}-probe");
    let probe: Uuid = client.submit(&probe, &probe).await?.parse()?;
    wait_for(&pushed, &[probe], Duration::from_secs(30)).await?;
    let (waiting, arrivals) = tokio::sync::mpsc::unbounded_channel();
    let poller = tokio::spawn(poll(pool.clone(), arrivals, modelled.clone(), stop.clone()));

    let period = Duration::from_secs_f64(1.0 / f64::from(rate_asked));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut senders = tokio::task::JoinSet::new();
    let started = Instant::now();
    let mut sent = 0usize;
    while started.elapsed() < sizes.live_duration {
        ticks.tick().await;
        let slot = slots.clone().acquire_owned().await?;
        let (client, acked, waiting) = (client.clone(), acked.clone(), waiting.clone());
        senders.spawn(async move {
            let model = format!("w6-{phase}-{}", sent % BATCHES);
            let custom_id = format!("w6-{sent}");
            let id: Uuid = client.submit(&custom_id, &model).await?.parse()?;
            note(&acked, id, Instant::now());
            drop(slot);
            waiting.send(id)?;
            anyhow::Ok(())
        });
        sent += 1;
    }
    while let Some(done) = senders.join_next().await {
        done??;
    }
    let issued = rate(sent, started.elapsed());
    let ids: Vec<Uuid> = snapshot(&acked).into_keys().collect();
    let settled = wait_for(&modelled, &ids, SETTLE).await.is_ok()
        && wait_for(&pushed, &ids, SETTLE).await.is_ok();
    stop.cancel();
    poller.await??;
    listener.await??;
    ensure!(
        settled,
        "not every acknowledged command showed within {SETTLE:?}"
    );

    let acked = snapshot(&acked);
    let since_ack = |seen: &Seen| {
        let seen = snapshot(seen);
        let mut latencies = Latencies::default();
        for (id, ack) in &acked {
            if let Some(at) = seen.get(id) {
                latencies.push(at.saturating_duration_since(*ack));
            }
        }
        latencies
    };
    let (model, subscriber) = (since_ack(&modelled), since_ack(&pushed));
    let at = format!("at {rate_asked}/s");
    Ok(vec![
        Figure::plain(
            format!("commands/s held (asked {rate_asked})"),
            issued,
            "commands/s",
        ),
        Figure::plain(
            format!("ack -> read model p50, {at}"),
            model.percentile_ms(0.5),
            "ms",
        ),
        Figure::plain(
            format!("ack -> read model p99, {at}"),
            model.percentile_ms(0.99),
            "ms",
        )
        .goal(Goal::Below(50.0)),
        Figure::plain(
            format!("ack -> subscriber p50, {at}"),
            subscriber.percentile_ms(0.5),
            "ms",
        ),
        Figure::plain(
            format!("ack -> subscriber p99, {at}"),
            subscriber.percentile_ms(0.99),
            "ms",
        )
        .goal(Goal::Below(50.0)),
    ])
}

/// A `requestsUpdated` subscriber noting when each request's first update arrives.
async fn listen(
    server: &Server,
    pushed: Seen,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let updates = subscribe(server, "subscription { requestsUpdated { id eventType } }").await?;
    Ok(tokio::spawn(async move {
        let mut updates = std::pin::pin!(updates);
        loop {
            let update = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                update = updates.next() => update.context("the subscription ended")??,
            };
            let id = update["requestsUpdated"]["id"].as_str().unwrap_or_default();
            note(&pushed, id.parse()?, Instant::now());
        }
    }))
}

/// Polls the `requests` read model for the acknowledged ids (arriving on `arrivals`) that
/// it does not show yet.
async fn poll(
    pool: PgPool,
    mut arrivals: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
    modelled: Seen,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut waiting: Vec<Uuid> = Vec::new();
    while !stop.is_cancelled() {
        while let Ok(id) = arrivals.try_recv() {
            waiting.push(id);
        }
        if !waiting.is_empty() {
            let found: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM requests WHERE id = ANY($1)")
                .bind(&waiting)
                .fetch_all(&pool)
                .await?;
            let now = Instant::now();
            for id in &found {
                note(&modelled, *id, now);
            }
            waiting.retain(|id| !found.contains(id));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Waits until every one of `ids` was seen.
async fn wait_for(seen: &Seen, ids: &[Uuid], patience: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let all = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            ids.iter().all(|id| seen.contains_key(id))
        };
        if all {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "waited {patience:?} in vain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
