//! The database's own limits, measured with plain SQL on a plain table: what any service on
//! this PostgreSQL could reach at best for the same work.

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::stats::rate;

/// Plain-SQL measurements on the bench database.
pub(crate) struct Limits {
    pool: PgPool,
}

impl Limits {
    /// Limits measured on `pool`'s database, in a table of their own.
    pub(crate) async fn new(pool: &PgPool) -> anyhow::Result<Self> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS bench_limit
                 (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload jsonb NOT NULL)",
        )
        .execute(pool)
        .await?;
        Ok(Self { pool: pool.clone() })
    }

    /// The median stored size (payload and metadata) of the service's events of
    /// `aggregate_type` and `event_type`, in bytes; 500 when there are none yet.
    pub(crate) async fn event_bytes(
        &self,
        aggregate_type: &str,
        event_type: &str,
    ) -> anyhow::Result<usize> {
        let average: Option<f64> = sqlx::query_scalar(
            "SELECT percentile_cont(0.5) WITHIN GROUP
                        (ORDER BY octet_length(payload::text) + octet_length(metadata::text))
               FROM events WHERE aggregate_type = $1 AND event_type = $2",
        )
        .bind(aggregate_type)
        .bind(event_type)
        .fetch_one(&self.pool)
        .await?;
        Ok(average.map_or(500, |bytes| bytes.round() as usize))
    }

    async fn empty(&self) -> anyhow::Result<()> {
        sqlx::query("TRUNCATE bench_limit")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Single-row INSERT transactions (autocommit) of `bytes` each: `count` on one connection.
    pub(crate) async fn sequential_inserts(
        &self,
        bytes: usize,
        count: usize,
    ) -> anyhow::Result<f64> {
        self.empty().await?;
        let payload = padding(bytes);
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        for _ in 0..count {
            insert_one(&mut conn, &payload).await?;
        }
        Ok(rate(count, started.elapsed()))
    }

    /// Single-row INSERT transactions of `bytes` each on `connections` connections at once
    /// for `duration`; transactions per second in all.
    pub(crate) async fn concurrent_inserts(
        &self,
        bytes: usize,
        connections: usize,
        duration: Duration,
    ) -> anyhow::Result<f64> {
        self.empty().await?;
        let payload = padding(bytes);
        let started = Instant::now();
        let deadline = started + duration;
        let mut writers = tokio::task::JoinSet::new();
        for _ in 0..connections {
            let (pool, payload) = (self.pool.clone(), payload.clone());
            writers.spawn(async move {
                let mut conn = pool.acquire().await?;
                let mut done = 0usize;
                while Instant::now() < deadline {
                    insert_one(&mut conn, &payload).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            });
        }
        let mut total = 0;
        while let Some(done) = writers.join_next().await {
            total += done??;
        }
        Ok(rate(total, started.elapsed()))
    }

    /// `transactions` INSERTs of `rows` rows of `bytes` each (one statement, the rows sent
    /// as parameters); rows per second.
    pub(crate) async fn bulk_inserts(
        &self,
        bytes: usize,
        rows: usize,
        transactions: usize,
    ) -> anyhow::Result<f64> {
        self.empty().await?;
        let payloads = vec![padding(bytes); rows];
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        for _ in 0..transactions {
            sqlx::query("INSERT INTO bench_limit (payload) SELECT unnest($1::jsonb[])")
                .bind(&payloads)
                .execute(&mut *conn)
                .await?;
        }
        Ok(rate(rows * transactions, started.elapsed()))
    }

    /// Reads the service's events of `types` in log order with `COPY ... TO STDOUT`; how
    /// many and how fast (events per second).
    pub(crate) async fn copy_events(&self, types: &[&str]) -> anyhow::Result<(u64, f64)> {
        let quoted: Vec<String> = types.iter().map(|t| format!("'{t}'")).collect();
        let statement = format!(
            "COPY (SELECT aggregate_type, aggregate_id, sequence, event_type, event_version,
                          payload, metadata, log_position
                     FROM events WHERE aggregate_type IN ({})
                    ORDER BY log_position) TO STDOUT",
            quoted.join(", ")
        );
        let mut conn = self.pool.acquire().await?;
        let started = Instant::now();
        let mut stream = conn.copy_out_raw(&statement).await?;
        let mut lines = 0u64;
        while let Some(chunk) = stream.try_next().await? {
            lines += chunk.iter().filter(|&&byte| byte == b'\n').count() as u64;
        }
        let took = started.elapsed();
        Ok((lines, lines as f64 / took.as_secs_f64().max(f64::EPSILON)))
    }
}

fn padding(bytes: usize) -> Value {
    json!({ "pad": "x".repeat(bytes.saturating_sub(10)) })
}

async fn insert_one(conn: &mut sqlx::PgConnection, payload: &Value) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO bench_limit (payload) VALUES ($1)")
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}
