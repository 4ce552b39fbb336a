//! The test server's streaming replica (`.ci/start-replica`: a second PostgreSQL cluster on
//! port 5433, made by `pg_basebackup`), started when it does not stream.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use super::database::execute_blocking;
use super::{eventually, TestDb};

const PORT: u16 = 5433;

/// A test database as the replica serves it.
pub struct Replica {
    /// Its URL on the replica (`CHRONICLE_READ_DATABASE_URL`).
    pub url: String,
    /// Options for connecting to it there.
    options: PgConnectOptions,
    /// Options for connecting to the replica's `postgres` database.
    admin: PgConnectOptions,
}

impl Replica {
    /// Starts the replica when it does not stream (the script takes a lock: test processes
    /// run at once) and waits until it has replayed `db`'s creation.
    pub async fn of(db: &TestDb) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/start-replica");
        let status = tokio::process::Command::new(script)
            .status()
            .await
            .expect("run .ci/start-replica");
        assert!(status.success(), ".ci/start-replica failed");
        let options = db.options.clone().port(PORT);
        let url = db.url_on_port(PORT);
        eventually(
            Duration::from_secs(30),
            "the replica has the test database",
            || {
                let options = options.clone();
                async move {
                    let mut conn = options.connect().await.ok()?;
                    let migrated: bool =
                        sqlx::query_scalar("SELECT to_regclass('events') IS NOT NULL")
                            .fetch_one(&mut conn)
                            .await
                            .ok()?;
                    migrated.then_some(())
                }
            },
        )
        .await;
        Self {
            url,
            admin: options.clone().database("postgres"),
            options,
        }
    }

    /// Waits until the replica has replayed the log up to `position`.
    pub async fn replayed(&self, position: i64) {
        let what = format!("the replica to replay the log up to {position}");
        eventually(Duration::from_secs(30), &what, || async {
            let mut conn = self.options.connect().await.ok()?;
            let head: Option<i64> = sqlx::query_scalar("SELECT max(log_position) FROM events")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            (head.unwrap_or_default() >= position).then_some(())
        })
        .await;
    }

    /// Pauses replay (WAL still arrives, nothing is applied) until the guard is dropped.
    pub async fn pause(&self) -> PausedReplay {
        let mut conn = self.admin.connect().await.expect("connect to the replica");
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&mut conn)
            .await
            .expect("pause replay");
        conn.close().await.expect("close");
        eventually(Duration::from_secs(10), "replay paused", || async {
            let mut conn = self.admin.connect().await.ok()?;
            let state: String = sqlx::query_scalar("SELECT pg_get_wal_replay_pause_state()")
                .fetch_one(&mut conn)
                .await
                .ok()?;
            (state == "paused").then_some(())
        })
        .await;
        PausedReplay {
            admin: self.admin.clone(),
        }
    }
}

/// Replay paused on the replica; resumed on drop, even when the test fails.
pub struct PausedReplay {
    admin: PgConnectOptions,
}

impl Drop for PausedReplay {
    fn drop(&mut self) {
        let resumed = execute_blocking(&self.admin, "SELECT pg_wal_replay_resume()".into());
        assert!(
            resumed || std::thread::panicking(),
            "could not resume replay on the replica"
        );
    }
}
