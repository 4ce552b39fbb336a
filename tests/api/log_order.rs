//! The global log under concurrent writers: nothing skipped, nothing twice, streams in order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chronicle::log::{CommittedFeed, LiveLog, LogFilter, LogReader, LogWaker, MAX_PAGE_BYTES};
use chronicle_aggregates::Upcasters;
use chronicle_projections::LogCursor;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::support::{LedgerCommand, TestApp, TestDb};

const WRITERS: usize = 16;
const LEDGERS_PER_WRITER: usize = 5;
const EVENTS_PER_WRITER: usize = 1250;
const SLOW_TRANSACTIONS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_event_of_sixteen_writers_exactly_once_and_in_order() {
    let db = TestDb::new().await;
    let app = Arc::new(TestApp::spawn(&db, "log-order").await);
    let expected = WRITERS * EVENTS_PER_WRITER + SLOW_TRANSACTIONS;

    let shutdown = CancellationToken::new();
    let live = live_log(&db, &shutdown).await;
    let mut events = Box::pin(live.tail(Default::default(), LogFilter::default()));
    let tailing = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(expected);
        while seen.len() < expected {
            match tokio::time::timeout(Duration::from_secs(60), events.next()).await {
                Ok(Some(event)) => seen.push(event),
                _ => break,
            }
        }
        seen
    });

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let app = Arc::clone(&app);
        writers.push(tokio::spawn(async move { write(&app, writer).await }));
    }
    // Transactions that allocate a position and then stay open while others commit: the
    // case where a reader that trusts positions alone skips events.
    let slow = tokio::spawn(slow_transactions(db.pool.clone()));
    for writer in writers {
        writer.await.expect("writer");
    }
    slow.await.expect("slow writer");

    let seen = tailing.await.expect("reader");
    shutdown.cancel();
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type <> 'Client'")
            .fetch_one(&db.pool)
            .await
            .expect("count");
    assert_eq!(stored as usize, expected);
    assert_eq!(seen.len(), expected, "the reader missed events");

    let positions: HashSet<i64> = seen.iter().map(|e| e.cursor.position).collect();
    assert_eq!(positions.len(), expected, "an event was delivered twice");
    assert!(
        seen.windows(2).all(|w| w[0].cursor < w[1].cursor),
        "log order broken"
    );
    let mut last_sequence: HashMap<&str, i64> = HashMap::new();
    for event in &seen {
        let last = last_sequence.entry(&event.aggregate_id).or_insert(0);
        assert_eq!(
            event.sequence,
            *last + 1,
            "{} out of order",
            event.aggregate_id
        );
        *last = event.sequence;
    }
    Arc::try_unwrap(app)
        .ok()
        .expect("app still shared")
        .stop()
        .await;
}

async fn write(app: &TestApp, writer: usize) {
    let ledgers: Vec<String> = (0..LEDGERS_PER_WRITER)
        .map(|i| format!("writer-{writer}-ledger-{i}"))
        .collect();
    for ledger in &ledgers {
        app.ledger(ledger, LedgerCommand::Open).await.expect("open");
    }
    let mut remaining = EVENTS_PER_WRITER - LEDGERS_PER_WRITER;
    let mut round = 0;
    while remaining > 0 {
        let batch = remaining.min(10);
        let amounts = vec![1; batch];
        let ledger = &ledgers[round % ledgers.len()];
        app.ledger(ledger, LedgerCommand::Deposit(amounts))
            .await
            .expect("deposit");
        remaining -= batch;
        round += 1;
    }
}

async fn slow_transactions(pool: sqlx::PgPool) {
    for i in 0..SLOW_TRANSACTIONS {
        let mut tx = pool.begin().await.expect("begin");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ('Ledger', $1, 1, 'Opened', '1.0', '\"Opened\"', '{}')",
        )
        .bind(format!("slow-{i}"))
        .execute(&mut *tx)
        .await
        .expect("insert");
        sqlx::query("SELECT pg_sleep(0.05)")
            .execute(&mut *tx)
            .await
            .expect("sleep");
        tx.commit().await.expect("commit");
    }
}

/// How long the transactions stay open while the writer appends.
const HELD_OPEN: Duration = Duration::from_secs(60);

/// Transactions left open elsewhere on the server for a minute (another database's, and an
/// analyst's in this database under the analytics role, holding a snapshot) hold their
/// transaction ids while a writer appends: a reader of the log follows the writer regardless,
/// since log positions are given in commit order. Every event reaches the reader, in order,
/// with a p99 delay under a second (a stall would last the minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_left_open_elsewhere_do_not_hold_readers_back() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "log-open").await;
    let elsewhere = [
        open_transaction(db.options.clone().database("postgres"), None).await,
        open_transaction(db.options.clone(), Some("chronicle_analytics")).await,
    ];

    let shutdown = CancellationToken::new();
    let live = live_log(&db, &shutdown).await;
    let events = live.tail(live.head(), LogFilter::default());
    let reading = tokio::spawn(async move {
        let mut events = Box::pin(events);
        let mut received = Vec::new();
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_secs(10), events.next()).await
        {
            received.push((event.sequence, tokio::time::Instant::now()));
        }
        received
    });
    let mut appended = vec![(1, tokio::time::Instant::now())];
    app.ledger("open-elsewhere", LedgerCommand::Open)
        .await
        .expect("open");
    let until = tokio::time::Instant::now() + HELD_OPEN;
    while tokio::time::Instant::now() < until {
        let receipt = app
            .ledger("open-elsewhere", LedgerCommand::Deposit(vec![1]))
            .await
            .expect("deposit");
        appended.push((receipt.version, tokio::time::Instant::now()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let received = reading.await.expect("reader");
    let sequences: Vec<i64> = received.iter().map(|(sequence, _)| *sequence).collect();
    let written: Vec<i64> = appended.iter().map(|(sequence, _)| *sequence).collect();
    assert_eq!(sequences, written, "every event, once, in order");
    let mut delays: Vec<Duration> = appended
        .iter()
        .zip(&received)
        .map(|((_, appended), (_, received))| received.saturating_duration_since(*appended))
        .collect();
    delays.sort();
    let p99 = delays[delays.len() * 99 / 100];
    assert!(
        p99 < Duration::from_secs(1),
        "p99 delay {p99:?} over {} events",
        delays.len()
    );
    for open in elsewhere {
        open.rollback().await.expect("rollback");
    }
    shutdown.cancel();
    app.stop().await;
}

/// A transaction on `options`' database, as `role` when given, holding a transaction id and a
/// snapshot until it ends (the server's idle-in-transaction timeout is off for it).
async fn open_transaction(
    options: sqlx::postgres::PgConnectOptions,
    role: Option<&str>,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .expect("connect");
    let mut open = pool.begin().await.expect("begin");
    let mut statements = vec![
        "SET LOCAL idle_in_transaction_session_timeout = 0".to_owned(),
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ".to_owned(),
    ];
    statements.extend(role.map(|role| format!("SET LOCAL ROLE {role}")));
    statements.push("SELECT pg_current_xact_id()".to_owned());
    if role.is_some() {
        statements.push("SELECT count(*) FROM analytics.usage_daily".to_owned());
    }
    for statement in statements {
        sqlx::query(&statement)
            .execute(&mut *open)
            .await
            .unwrap_or_else(|error| panic!("{statement}: {error}"));
    }
    open
}

/// Many live consumers read from the instance's one live reader, each filtering in memory,
/// and a consumer that starts behind the live window catches up from the database first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_consumers_share_one_reader_and_one_behind_catches_up() {
    let db = TestDb::new().await;
    let app = TestApp::spawn(&db, "log-live").await;
    app.ledger("early", LedgerCommand::Open)
        .await
        .expect("open");
    app.ledger("early", LedgerCommand::Deposit(vec![1; 9]))
        .await
        .expect("deposit");

    let shutdown = CancellationToken::new();
    let live = live_log(&db, &shutdown).await;
    let only = |id: &str| LogFilter {
        aggregate_id: Some(id.to_owned()),
        ..LogFilter::default()
    };
    let mut consumers = Vec::new();
    for n in 0..200 {
        let ledger = format!("live-{}", n % 10);
        let events = live.tail(live.head(), only(&ledger));
        consumers.push(tokio::spawn(take(events, 4, ledger)));
    }
    let behind = tokio::spawn(take(
        live.tail(Default::default(), only("early")),
        12,
        "early".to_owned(),
    ));
    for n in 0..10 {
        let ledger = format!("live-{n}");
        app.ledger(&ledger, LedgerCommand::Open)
            .await
            .expect("open");
        app.ledger(&ledger, LedgerCommand::Deposit(vec![1, 2, 3]))
            .await
            .expect("deposit");
    }
    app.ledger("early", LedgerCommand::Deposit(vec![1, 2]))
        .await
        .expect("deposit");
    for consumer in consumers {
        let (ledger, sequences) = consumer.await.expect("consumer");
        assert_eq!(sequences, [1, 2, 3, 4], "{ledger}");
    }
    let (_, sequences) = behind.await.expect("behind");
    assert_eq!(sequences, (1..=12).collect::<Vec<i64>>());
    shutdown.cancel();
    app.stop().await;
}

/// The sequences of the first `count` events of `events`, for `ledger`.
async fn take(
    events: impl futures::Stream<Item = chronicle_projections::RecordedEvent> + Send,
    count: usize,
    ledger: String,
) -> (String, Vec<i64>) {
    let mut events = Box::pin(events);
    let mut sequences = Vec::new();
    while sequences.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .unwrap_or_else(|_| panic!("{ledger}: only {sequences:?}"))
            .expect("an event");
        assert_eq!(event.aggregate_id, ledger);
        sequences.push(event.sequence);
    }
    (ledger, sequences)
}

/// A log page read is a prepared statement whose generic plan, with its optional filters,
/// is estimated at millions of cost units: with JIT on, PostgreSQL compiled it on every
/// execution (265 ms of a 2 ms read), so Chronicle's connections turn JIT off.
#[tokio::test]
async fn connections_read_the_log_without_jit_and_bound_open_transactions() {
    let db = TestDb::new().await;
    let jit: String = sqlx::query_scalar("SHOW jit")
        .fetch_one(&db.pool)
        .await
        .expect("jit");
    assert_eq!(jit, "off");
    let idle: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&db.pool)
        .await
        .expect("idle timeout");
    assert_eq!(idle, "30s");
}

/// Pages are bounded by their events' size as JSON text, not as stored: ten events of
/// 600 kB that compress to a few kB each do not all come in one page.
#[tokio::test]
async fn a_page_of_large_compressible_events_stops_at_its_text_size() {
    let db = TestDb::new().await;
    let memo = "a".repeat(600_000);
    for sequence in 1..=10_i64 {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             VALUES ('Ledger', 'large', $1, 'Deposited', '2.0.0',
                     jsonb_build_object('Deposited', jsonb_build_object('amount', 1, 'memo', $2::text)),
                     '{}')",
        )
        .bind(sequence)
        .bind(&memo)
        .execute(&db.pool)
        .await
        .expect("a large event");
    }
    let (text, stored): (i64, i64) = sqlx::query_as(
        "SELECT max(payload_bytes)::bigint, max(pg_column_size(payload))::bigint FROM events",
    )
    .fetch_one(&db.pool)
    .await
    .expect("sizes");
    assert!(
        text > 600_000 && stored < text / 10,
        "{text} as text, {stored} stored"
    );
    let reader = LogReader::new(
        db.pool.clone(),
        Arc::new(Upcasters::default()),
        crate::support::vault(&db.pool),
    );
    let page = reader
        .read(LogCursor::START, &LogFilter::default(), 100)
        .await
        .expect("a page");
    let fits = usize::try_from(MAX_PAGE_BYTES / 600_000).expect("a count");
    assert!(page.truncated, "{} events", page.events.len());
    assert!(
        (1..=fits).contains(&page.events.len()),
        "{} events",
        page.events.len()
    );
}

/// A live log of the test database, until `shutdown`.
async fn live_log(db: &TestDb, shutdown: &CancellationToken) -> LiveLog {
    let waker = LogWaker::start(&db.pool, Duration::from_millis(100), shutdown.clone());
    let reader = LogReader::new(
        db.pool.clone(),
        Arc::new(Upcasters::default()),
        crate::support::vault(&db.pool),
    );
    LiveLog::start(reader, &waker, &CommittedFeed::default(), shutdown.clone())
        .await
        .expect("live log")
}
