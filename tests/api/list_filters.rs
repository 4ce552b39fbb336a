//! Request and batch lists narrowed by each filter, alone and together, and paged: the
//! lists put only the filters they are given in their SQL, so every combination is its own
//! statement and each must select the same rows the filter names.

use chronicle_projections::batches::{self, BatchFilter};
use chronicle_projections::requests::{self, RequestFilter};
use chrono::{DateTime, Duration, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::support::TestDb;

/// One read-model row: owner, model, status, endpoint, delivery kind, minutes after `T0`.
type Row = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    i64,
);

const ROWS: [Row; 6] = [
    (
        "ana",
        "gpt-a",
        "pending",
        "/v1/chat/completions",
        "webhook",
        0,
    ),
    (
        "ana",
        "gpt-b",
        "succeeded",
        "/v1/chat/completions",
        "poll",
        1,
    ),
    ("ana", "gpt-a", "succeeded", "/v1/embeddings", "poll", 2),
    ("bob", "gpt-a", "pending", "/v1/chat/completions", "poll", 3),
    ("bob", "gpt-b", "failed", "/v1/embeddings", "webhook", 4),
    (
        "bob",
        "gpt-a",
        "succeeded",
        "/v1/chat/completions",
        "webhook",
        5,
    ),
];

/// A filter and which of `ROWS` it keeps.
type Case<F> = (F, Box<dyn Fn(&Row) -> bool>);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 1, 9, 0, 0)
        .single()
        .expect("a valid time")
}

/// Inserts `ROWS` as requests (batch: one per owner) and as batches; returns the request
/// ids, the batch ids (in `ROWS` order) and the owners' batches.
async fn seed(pool: &PgPool) -> (Vec<Uuid>, Vec<Uuid>, [Uuid; 2]) {
    let owner_batches = [Uuid::now_v7(), Uuid::now_v7()];
    let (mut request_ids, mut batch_ids) = (Vec::new(), Vec::new());
    for (n, (owner, model, status, endpoint, delivery, minutes)) in ROWS.into_iter().enumerate() {
        let at = t0() + Duration::minutes(minutes);
        let batch = owner_batches[usize::from(owner == "bob")];
        let id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO requests (id, owner, batch_id, custom_id, endpoint, model, status,
                                   delivery, body, version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, jsonb_build_object('kind', $8::text), '{}',
                     1, $9, $9)",
        )
        .bind(id)
        .bind(owner)
        .bind(batch)
        .bind(format!("c{n}"))
        .bind(endpoint)
        .bind(model)
        .bind(status)
        .bind(delivery)
        .bind(at)
        .execute(pool)
        .await
        .expect("a request row");
        request_ids.push(id);
        let batch_id = Uuid::now_v7();
        sqlx::query(
            "INSERT INTO batches (id, owner, endpoint, model, status, request_count, size_bytes,
                                  version, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 1, 1, 1, $6, $6)",
        )
        .bind(batch_id)
        .bind(owner)
        .bind(endpoint)
        .bind(model)
        .bind(status)
        .bind(at)
        .execute(pool)
        .await
        .expect("a batch row");
        batch_ids.push(batch_id);
    }
    (request_ids, batch_ids, owner_batches)
}

/// The ids of `ROWS` (newest first) for which `keep` holds.
fn expected(ids: &[Uuid], keep: impl Fn(&Row) -> bool) -> Vec<Uuid> {
    let mut kept: Vec<Uuid> = ROWS
        .iter()
        .zip(ids)
        .filter(|(row, _)| keep(row))
        .map(|(_, id)| *id)
        .collect();
    kept.reverse();
    kept
}

async fn listed_requests(pool: &PgPool, filter: RequestFilter) -> Vec<Uuid> {
    let rows = requests::list(pool, &filter, None, 50)
        .await
        .expect("a list");
    rows.into_iter().map(|row| row.id).collect()
}

#[tokio::test]
async fn each_request_filter_alone_and_together_selects_what_it_names() {
    let db = TestDb::new().await;
    let (ids, _, owner_batches) = seed(&db.pool).await;
    let text = |value: &str| Some(value.to_owned());
    let cases: Vec<Case<RequestFilter>> = vec![
        (RequestFilter::default(), Box::new(|_| true)),
        (
            RequestFilter {
                owner: text("ana"),
                ..Default::default()
            },
            Box::new(|r| r.0 == "ana"),
        ),
        (
            RequestFilter {
                model: text("gpt-a"),
                ..Default::default()
            },
            Box::new(|r| r.1 == "gpt-a"),
        ),
        (
            RequestFilter {
                status: text("succeeded"),
                ..Default::default()
            },
            Box::new(|r| r.2 == "succeeded"),
        ),
        (
            RequestFilter {
                endpoint: text("/v1/embeddings"),
                ..Default::default()
            },
            Box::new(|r| r.3 == "/v1/embeddings"),
        ),
        (
            RequestFilter {
                batch_id: Some(owner_batches[1]),
                ..Default::default()
            },
            Box::new(|r| r.0 == "bob"),
        ),
        (
            RequestFilter {
                polled_only: true,
                ..Default::default()
            },
            Box::new(|r| r.4 == "poll"),
        ),
        (
            RequestFilter {
                created_from: Some(t0() + Duration::minutes(1)),
                created_until: Some(t0() + Duration::minutes(4)),
                ..Default::default()
            },
            Box::new(|r| (1..4).contains(&r.5)),
        ),
        (
            RequestFilter {
                owner: text("bob"),
                model: text("gpt-a"),
                status: text("succeeded"),
                ..Default::default()
            },
            Box::new(|r| r.0 == "bob" && r.1 == "gpt-a" && r.2 == "succeeded"),
        ),
    ];
    for (filter, keep) in cases {
        let described = format!("{filter:?}");
        assert_eq!(
            listed_requests(&db.pool, filter).await,
            expected(&ids, keep),
            "{described}"
        );
    }
}

#[tokio::test]
async fn a_filtered_list_pages_after_its_keyset_position() {
    let db = TestDb::new().await;
    let (ids, batch_ids, _) = seed(&db.pool).await;
    let filter = RequestFilter {
        model: Some("gpt-a".into()),
        ..Default::default()
    };
    let all = expected(&ids, |r| r.1 == "gpt-a");
    let first = requests::list(&db.pool, &filter, None, 2)
        .await
        .expect("a page");
    let last = first.last().expect("a full first page");
    let rest = requests::list(&db.pool, &filter, Some((last.created_at, last.id)), 50)
        .await
        .expect("the next page");
    let paged: Vec<Uuid> = first.iter().chain(&rest).map(|row| row.id).collect();
    assert_eq!(paged, all);

    let batch_filter = BatchFilter {
        owner: Some("bob".into()),
        ..Default::default()
    };
    let page = batches::list(&db.pool, &batch_filter, None, 2)
        .await
        .expect("a page");
    let last = page.last().expect("a full first page");
    let rest = batches::list(
        &db.pool,
        &batch_filter,
        Some((last.created_at, last.id)),
        50,
    )
    .await
    .expect("the next page");
    let paged: Vec<Uuid> = page.iter().chain(&rest).map(|row| row.id).collect();
    assert_eq!(paged, expected(&batch_ids, |r| r.0 == "bob"));
}

#[tokio::test]
async fn each_batch_filter_selects_what_it_names() {
    let db = TestDb::new().await;
    let (_, ids, _) = seed(&db.pool).await;
    let text = |value: &str| Some(value.to_owned());
    let cases: Vec<Case<BatchFilter>> = vec![
        (BatchFilter::default(), Box::new(|_| true)),
        (
            BatchFilter {
                owner: text("ana"),
                ..Default::default()
            },
            Box::new(|r| r.0 == "ana"),
        ),
        (
            BatchFilter {
                model: text("gpt-b"),
                ..Default::default()
            },
            Box::new(|r| r.1 == "gpt-b"),
        ),
        (
            BatchFilter {
                status: text("pending"),
                ..Default::default()
            },
            Box::new(|r| r.2 == "pending"),
        ),
        (
            BatchFilter {
                endpoint: text("/v1/embeddings"),
                ..Default::default()
            },
            Box::new(|r| r.3 == "/v1/embeddings"),
        ),
        (
            BatchFilter {
                created_from: Some(t0() + Duration::minutes(4)),
                ..Default::default()
            },
            Box::new(|r| r.5 >= 4),
        ),
        (
            BatchFilter {
                owner: text("ana"),
                model: text("gpt-a"),
                ..Default::default()
            },
            Box::new(|r| r.0 == "ana" && r.1 == "gpt-a"),
        ),
    ];
    for (filter, keep) in cases {
        let described = format!("{filter:?}");
        let rows = batches::list(&db.pool, &filter, None, 50)
            .await
            .expect("a list");
        let listed: Vec<Uuid> = rows.into_iter().map(|row| row.id).collect();
        assert_eq!(listed, expected(&ids, keep), "{described}");
    }
}
