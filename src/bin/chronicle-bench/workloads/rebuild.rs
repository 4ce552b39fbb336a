//! W5: rebuilding the request and batch read models from the log, against reading the same
//! events in log order with COPY.

use anyhow::{ensure, Context};

use crate::client::Client;
use crate::limits::Limits;
use crate::report::{Figure, Goal};
use crate::server::BenchDatabase;
use crate::sizes::Sizes;

/// The projections rebuilt, and the aggregate types whose events they read.
const PROJECTIONS: [&str; 2] = ["requests", "batches"];
const TYPES: [&str; 2] = ["Request", "Batch"];
/// Seeded events are inserted this many per transaction.
const SEED_CHUNK: usize = 25_000;

/// While the service runs: submits requests through the API (a tenth of the events, at most
/// 1,000), so that the log holds real request and batch events to copy, and waits until
/// every projection has caught up.
pub(crate) async fn prepare(client: &Client, sizes: &Sizes) -> anyhow::Result<()> {
    let requests = (sizes.rebuild_events / 10).clamp(1, 1_000);
    client.submit_many("w5", "w5", requests).await?;
    client.caught_up().await?;
    Ok(())
}

/// With the service stopped: tops the log up to the smaller size of request and batch
/// events with copies of a real `RequestSubmitted` (each a new request), measures COPY,
/// runs `chronicle projections rebuild` for each projection as its own process; then again
/// at the larger size. The rate over the larger log against the smaller one's says whether
/// a rebuild stays flat as the store grows.
pub(crate) async fn rebuild(
    database: &BenchDatabase,
    limits: &Limits,
    sizes: &Sizes,
) -> anyhow::Result<(Vec<Figure>, u64)> {
    let mut figures = Vec::new();
    let (mut rates, mut peak) = (Vec::new(), 0u64);
    for size in [sizes.rebuild_events_small, sizes.rebuild_events] {
        seed(database, size).await?;
        let (copied, limit) = limits.copy_events(&TYPES).await?;
        let measured = rebuild_each(database).await?;
        ensure!(
            measured.events == copied,
            "the rebuilds read {} events, COPY {copied}",
            measured.events
        );
        let rate = measured.events as f64 / measured.seconds.max(f64::EPSILON);
        figures.push(
            Figure::plain(
                format!("rebuild, {} events", measured.events),
                rate,
                "events/s",
            )
            .limit(limit)
            .goal(Goal::AtLeast(100_000.0)),
        );
        figures.extend(measured.figures);
        rates.push(rate);
        peak = peak.max(measured.peak);
    }
    if let [smaller, larger] = rates[..] {
        figures.push(
            Figure::plain(
                "rate over the larger log ÷ over the smaller",
                larger / smaller,
                "×",
            )
            .goal(Goal::AtLeast(0.8)),
        );
    }
    Ok((figures, peak))
}

/// What rebuilding each projection once measured.
struct Measured {
    figures: Vec<Figure>,
    events: u64,
    seconds: f64,
    peak: u64,
}

/// Rebuilds each projection as its own process and checks the requests read model after.
async fn rebuild_each(database: &BenchDatabase) -> anyhow::Result<Measured> {
    let mut measured = Measured {
        figures: Vec::new(),
        events: 0,
        seconds: 0.0,
        peak: 0,
    };
    for projection in PROJECTIONS {
        let (output, memory) = database.rebuild(projection).await?;
        let (applied, took) = parse_rebuilt(&output)?;
        measured.figures.push(Figure::plain(
            format!("{projection}: {applied} events"),
            applied as f64 / took.max(f64::EPSILON),
            "events/s",
        ));
        measured.events += applied;
        measured.seconds += took;
        measured.peak = measured.peak.max(memory);
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM requests")
        .fetch_one(&database.pool)
        .await?;
    let streams: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT aggregate_id) FROM events WHERE aggregate_type = 'Request'",
    )
    .fetch_one(&database.pool)
    .await?;
    ensure!(rows == streams, "rebuilt {rows} requests of {streams}");
    Ok(measured)
}

/// Appends copies of the newest `RequestSubmitted` until the log holds `target` request and
/// batch events: each a new request of the same batch, with its own id and custom id. Ids
/// are time-ordered, as the service's own (uuid v7) are.
async fn seed(database: &BenchDatabase, target: usize) -> anyhow::Result<()> {
    let present: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = ANY($1)")
            .bind(TYPES)
            .fetch_one(&database.pool)
            .await?;
    let mut missing = target.saturating_sub(usize::try_from(present).unwrap_or(0));
    eprintln!("W5: seeding {missing} request events ...");
    // The ids' leading 48 bits count up from now in milliseconds, like uuid v7's.
    let mut first_id = chrono::Utc::now().timestamp_millis();
    while missing > 0 {
        let chunk = missing.min(SEED_CHUNK);
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'Request', s.id::text, 1, t.event_type, t.event_version,
                    jsonb_set(jsonb_set(t.payload, '{Submitted,request_id}', to_jsonb(s.id)),
                              '{Submitted,spec,custom_id}', to_jsonb('seed-' || s.id)),
                    t.metadata
               FROM (SELECT * FROM events
                      WHERE aggregate_type = 'Request' AND event_type = 'RequestSubmitted'
                      ORDER BY position DESC LIMIT 1) t,
                    (SELECT (lpad(to_hex($2 + n), 12, '0')
                             || substr(md5(random()::text), 1, 20))::uuid AS id
                       FROM generate_series(1, $1) n) s",
        )
        .bind(i64::try_from(chunk)?)
        .bind(first_id)
        .execute(&database.pool)
        .await
        .context("seeding request events")?;
        missing -= chunk;
        first_id += i64::try_from(chunk)?;
    }
    Ok(())
}

/// `rebuilt <name>: <n> events in <s> s (...)`: the events and the seconds.
fn parse_rebuilt(output: &str) -> anyhow::Result<(u64, f64)> {
    let words: Vec<&str> = output.split_whitespace().collect();
    let parsed = match words.as_slice() {
        ["rebuilt", _, events, "events", "in", seconds, "s", ..] => {
            events.parse().ok().zip(seconds.parse().ok())
        }
        _ => None,
    };
    parsed.with_context(|| format!("unexpected rebuild output: {output}"))
}

#[cfg(test)]
mod tests {
    use super::parse_rebuilt;

    #[test]
    fn reads_the_rebuild_line() {
        let line = "rebuilt requests: 500000 events in 4.25 s (117647 events/s)\n";
        assert_eq!(parse_rebuilt(line).ok(), Some((500_000, 4.25)));
        assert!(parse_rebuilt("reset requests; the running instance ...").is_err());
    }
}
