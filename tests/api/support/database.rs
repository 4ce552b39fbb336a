//! A fresh database per test, cloned from a migrated template.
//!
//! The template's name carries a hash of the migrations, so a changed migration builds a new
//! one. Building and cloning happen under an advisory lock on the server, because nextest runs
//! each test in its own process. Databases of passed tests are dropped; a failed test's stays
//! for inspection and is swept after six hours.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chronicle::db::{self, MIGRATOR};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

const STALE_AFTER: Duration = Duration::from_secs(6 * 3600);

/// One test's own database.
pub struct TestDb {
    /// Options for connecting to it.
    pub options: PgConnectOptions,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
    admin: PgConnectOptions,
}

impl TestDb {
    /// A reader of `requests` that stays in its transaction (immune to the
    /// idle-in-transaction timeout), holding a rebuild's swap off until it ends.
    pub async fn hold_requests_open(&self) -> PgConnection {
        let mut reader = PgConnection::connect_with(&self.options)
            .await
            .expect("reader");
        sqlx::raw_sql(
            "SET idle_in_transaction_session_timeout = 0; BEGIN; SELECT count(*) FROM requests;",
        )
        .execute(&mut reader)
        .await
        .expect("reader's transaction");
        reader
    }

    /// Its URL, for a process of the binary.
    pub fn url(&self) -> String {
        self.url_on_port(self.options.get_port())
    }

    /// Its URL on a server of this host at `port` (a replica of this one has it too).
    pub fn url_on_port(&self, port: u16) -> String {
        let host = self.options.get_host();
        let user = self.options.get_username();
        format!("postgres://{user}@{host}:{port}/{}", self.name)
    }

    pub async fn new() -> Self {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let admin = db::connect_options(&url)
            .expect("DATABASE_URL")
            .database("postgres");
        let mut conn = admin.connect().await.expect("connect to PostgreSQL");
        sqlx::query("SELECT pg_advisory_lock(hashtext('chronicle.test.databases'))")
            .execute(&mut conn)
            .await
            .expect("lock");
        let template = ensure_template(&mut conn, &admin).await;
        sweep_stale(&mut conn).await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let name = format!("chronicle_test_{now}_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!(
            // WAL_LOG, not FILE_COPY: FILE_COPY holds a transaction id across two checkpoints,
            // and the cluster-wide snapshot horizon would stall every other test's log reader.
            "CREATE DATABASE {name} TEMPLATE {template} STRATEGY WAL_LOG"
        ))
        .execute(&mut conn)
        .await
        .expect("create test database");
        conn.close().await.expect("close");
        let options = admin.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_with(options.clone())
            .await
            .expect("connect to test database");
        Self {
            options,
            pool,
            name,
            admin,
        }
    }
}

async fn ensure_template(conn: &mut PgConnection, admin: &PgConnectOptions) -> String {
    let mut hash = Sha256::new();
    for migration in MIGRATOR.iter() {
        hash.update(migration.version.to_le_bytes());
        hash.update(&*migration.checksum);
    }
    let template = format!("chronicle_template_{}", &hex::encode(hash.finalize())[..16]);
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut *conn)
            .await
            .expect("look up template");
    if exists {
        return template;
    }
    let building = format!("{template}_building");
    for statement in [
        format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)"),
        format!("CREATE DATABASE {building}"),
    ] {
        sqlx::query(&statement)
            .execute(&mut *conn)
            .await
            .expect("template");
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(admin.clone().database(&building))
        .await
        .expect("connect to template");
    db::migrate(&pool).await.expect("migrate template");
    pool.close().await;
    // sqlx's migrator can leave its lock connection open after the pool closed; the template
    // is ours alone (under the advisory lock), so end whatever still uses it.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(&building)
    .execute(&mut *conn)
    .await
    .expect("end template connections");
    // A terminated server process may still be exiting: renaming waits for it.
    let rename = format!("ALTER DATABASE {building} RENAME TO {template}");
    for attempt in 1.. {
        match sqlx::query(&rename).execute(&mut *conn).await {
            Ok(_) => break,
            Err(error) if attempt < 50 => {
                let in_use = error
                    .as_database_error()
                    .and_then(|e| e.code())
                    .is_some_and(|code| code == "55006");
                assert!(in_use, "publish template: {error}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("publish template: {error}"),
        }
    }
    template
}

async fn sweep_stale(conn: &mut PgConnection) {
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE 'chronicle_test_%'")
            .fetch_all(&mut *conn)
            .await
            .expect("list test databases");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    for name in names {
        let created: Option<u64> = name.split('_').nth(2).and_then(|t| t.parse().ok());
        if created.is_some_and(|t| now.saturating_sub(t) > STALE_AFTER.as_secs()) {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut *conn)
                .await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test database kept for inspection: {}", self.name);
            return;
        }
        let drop = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let dropped = execute_blocking(&self.admin, drop);
        if !dropped {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}

/// Runs `sql` on a connection of its own and says whether it succeeded, blocking: for drops,
/// which run inside the test's runtime and cannot block on it, so this uses a thread with a
/// runtime of its own.
pub fn execute_blocking(options: &PgConnectOptions, sql: String) -> bool {
    let options = options.clone();
    let done = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut conn = options.connect().await?;
            sqlx::query(&sql).execute(&mut conn).await?;
            conn.close().await
        })
    })
    .join();
    matches!(done, Ok(Ok(())))
}
