//! A subscriber that reads slowly for a minute while the log grows by tens of megabytes: the
//! server holds back instead of buffering (its memory stays bounded), and once the
//! subscriber reads at full speed it receives every event, in order, once.

use std::time::{Duration, Instant};

use chronicle_projections::LogCursor;
use rand::Rng;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::support::checks;
use crate::support::client::{Answer, Client};
use crate::support::subscriber::Subscriber;
use crate::support::{long, Server, TestDb};

const SUBMIT: &str = "mutation($input: SubmitRequestInput!) {
    submitRequest(input: $input) { requestId } }";

/// Clients that grow the log.
const WRITERS: usize = 4;

/// Each request's body: a message of this many bytes, so events are large.
const BODY_BYTES: usize = 32 * 1024;

/// Unread bytes of payload that end the first stretch of slow reading.
const FIRST_MARK: u64 = 30_000_000;

/// How much more the backlog grows in the second stretch.
const SECOND_GROWTH: u64 = 80_000_000;

/// `length` random letters and digits: a body that does not compress away.
fn noise(length: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(length)
        .map(char::from)
        .collect()
}

/// Bytes of payload (as JSON text) of the events after `head` beyond the first `taken`.
async fn unread_bytes(pool: &PgPool, head: LogCursor, taken: usize) -> u64 {
    let bytes: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(sum(octet_length(payload::text)), 0)::bigint
           FROM ({} OFFSET $2) unread",
        checks::EVENTS_AFTER
    ))
    .bind(head.position)
    .bind(i64::try_from(taken).expect("count"))
    .fetch_one(pool)
    .await
    .expect("unread bytes");
    u64::try_from(bytes).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_holds_the_server_back_and_misses_nothing() {
    let db = TestDb::new().await;
    let mut server = Server::start(&db, &[]).await;
    let head = checks::log_head(&db.pool).await;
    let subscriber = Subscriber::start(
        &server.ws_url(),
        &format!(
            "subscription {{ events(after: \"{head}\") {{
                aggregateType aggregateId sequence payload }} }}"
        ),
    )
    .await;
    // Ten messages a second: far slower than the writers append.
    subscriber.pause(Duration::from_millis(100));
    let baseline = server.rss_bytes();

    let stop = CancellationToken::new();
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (client, stop) = (Client::new(server.url()), stop.clone());
            tokio::spawn(async move {
                let mut written = 0;
                while !stop.is_cancelled() {
                    let input = json!({
                        "customId": format!("w{writer}-{written}"),
                        "endpoint": "/v1/chat/completions", "model": "m",
                        "delivery": { "poll": true },
                        "body": { "messages": [{ "role": "user", "content": noise(BODY_BYTES) }] } });
                    let (answer, _) = client
                        .command(SUBMIT, "submitRequest", &json!({ "input": input }), Duration::from_secs(30))
                        .await;
                    assert!(matches!(answer, Some(Answer::Applied(_))), "{answer:?}");
                    written += 1;
                }
            })
        })
        .collect();
    // Two stretches of slow reading, each at least half the time and until the unread
    // backlog reached its mark: a server that buffered for the subscriber would grow with the
    // backlog in the second stretch; one that holds back stays flat.
    let slow_for = if long() {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(60)
    };
    let marks = [FIRST_MARK, FIRST_MARK + SECOND_GROWTH];
    let mut stretches = Vec::new();
    let give_up = Instant::now() + Duration::from_secs(300);
    for mark in marks {
        let started = Instant::now();
        let (mut peak, mut unread, mut checked) = (0, 0, Instant::now());
        while started.elapsed() < slow_for / 2 || unread < mark {
            assert!(
                Instant::now() < give_up,
                "the backlog reached only {unread} bytes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            peak = peak.max(server.rss_bytes());
            if checked.elapsed() > Duration::from_secs(2) {
                unread = unread_bytes(&db.pool, head, subscriber.count()).await;
                checked = Instant::now();
            }
        }
        stretches.push((peak, unread));
    }
    stop.cancel();
    for writer in writers {
        writer.await.expect("writer");
    }
    server.caught_up().await;
    let expected = checks::events_after(&db.pool, head).await;
    let taken = subscriber.count();
    let [(first_peak, first_unread), (second_peak, second_unread)] = stretches[..] else {
        unreachable!("two stretches");
    };
    let mb = |bytes: u64| bytes / 1_000_000;
    eprintln!(
        "{} events appended, {taken} read slowly; unread payload {} MB after the first stretch, \
         {} MB after the second; server memory {} MB before, peak {} MB in the first stretch, {} MB in the second",
        expected.len(),
        mb(first_unread),
        mb(second_unread),
        mb(baseline),
        mb(first_peak),
        mb(second_peak)
    );
    assert!(
        expected.len() > taken * 3,
        "the subscriber was not slow: it read {taken} of {} events",
        expected.len()
    );
    let backlog_growth = second_unread.saturating_sub(first_unread);
    let memory_growth = second_peak.saturating_sub(first_peak);
    assert!(
        memory_growth.saturating_mul(2) < backlog_growth,
        "memory grew by {memory_growth} bytes while the backlog grew by {backlog_growth}: \
         the server buffers for the subscriber"
    );
    assert!(
        mb(second_peak.saturating_sub(baseline)) < 200,
        "memory grew from {baseline} to {second_peak} bytes"
    );

    subscriber.pause(Duration::ZERO);
    let received = subscriber
        .finish(expected.len(), Duration::from_secs(120))
        .await;
    // Workers may still append (the batch closer closes the last batch when it has waited
    // long enough): the subscription is held against the log as it is now, every event of it
    // that the subscriber got.
    let now = checks::events_after(&db.pool, head).await;
    assert!(received.len() >= expected.len() && received.len() <= now.len());
    checks::subscription_saw(&received, &now[..received.len()]);
    server.stop().await;
}
