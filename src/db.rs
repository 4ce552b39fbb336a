//! Connecting to PostgreSQL: create the database when missing, run migrations, and fail with
//! one clear line when the server cannot be reached.

use std::time::Duration;

use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// The schema history, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Parses the URL and adds the session settings every Chronicle connection needs.
///
/// # Errors
/// The URL is not a PostgreSQL URL.
pub fn connect_options(database_url: &str) -> anyhow::Result<PgConnectOptions> {
    let options: PgConnectOptions = database_url
        .parse()
        .with_context(|| format!("DATABASE_URL `{database_url}` is not a PostgreSQL URL"))?;
    // A server on this host is reached without TLS unless the URL asks for it: the traffic
    // never leaves the machine, and encrypting it cost a quarter of a command's time and
    // two thirds of a list query's in the bench.
    let options = if loopback(&options) && !database_url.contains("sslmode=") {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    };
    // Instances are told apart in `pg_stat_activity` (and in metrics and `roles`) by the
    // URL's `application_name`, by default `chronicle@<host>:<pid>`.
    let options = if options.get_application_name().is_none() {
        options.application_name(&default_instance_name())
    } else {
        options
    };
    // A transaction left open after appending would hold the log's append lock (see the
    // `log_positions_in_commit_order` migration) and stop every writer. JIT is off: a
    // prepared statement's generic plan with optional filters is estimated at millions of
    // cost units whatever it reads, and compiling it took 265 ms of a log page read that
    // runs in 2 ms (`EXPLAIN ANALYZE` over the bench's 1.3 million events).
    // Projectors name the analytics tables unqualified, so that a rebuild's connection can
    // find its copies of them first (see `projection::rebuild`).
    Ok(options
        .options([
            ("search_path", "public,analytics"),
            ("idle_in_transaction_session_timeout", "30s"),
            ("jit", "off"),
        ])
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// `chronicle@<host>:<pid>`: unique among instances sharing a database.
fn default_instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|host| host.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("chronicle@{host}:{}", std::process::id())
}

/// True for a Unix socket or a loopback address or name.
fn loopback(options: &PgConnectOptions) -> bool {
    let host = options.get_host();
    options.get_socket().is_some()
        || host.starts_with('/')
        || host == "localhost"
        || host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How long a pooled connection may stay unused before it is closed: an idle instance holds
/// only its roles and notification connections.
pub const IDLE_CONNECTION: Duration = Duration::from_secs(10);

/// Connects a pool to the configured database, creating the database first if it is missing.
///
/// # Errors
/// PostgreSQL is unreachable or refuses; the message says what was tried and what to do.
pub async fn connect(options: &PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    // One plain connection first: a pool would retry a refused connection until its timeout.
    match PgConnection::connect_with(options).await {
        Ok(conn) => conn.close().await?,
        Err(error) if is_missing_database(&error) => create_database(options).await?,
        Err(error) => return Err(unreachable(options, &error)),
    }
    pool(options, max_connections).await
}

/// Connects a pool to the configured database only if it exists and holds Chronicle's log:
/// for the tools that read (export, status, verify), which never create a database or
/// migrate one, so a mistyped URL is an error and SELECT rights suffice.
///
/// # Errors
/// PostgreSQL is unreachable, the database does not exist, or it holds no event log.
pub async fn connect_existing(
    options: &PgConnectOptions,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    let name = options.get_database().unwrap_or("postgres");
    match PgConnection::connect_with(options).await {
        Ok(conn) => conn.close().await?,
        Err(error) if is_missing_database(&error) => anyhow::bail!(
            "database `{name}` does not exist on {}:{}; check DATABASE_URL (this command \
             only reads, and creates nothing)",
            options.get_host(),
            options.get_port()
        ),
        Err(error) => return Err(unreachable(options, &error)),
    }
    let pool = pool(options, max_connections).await?;
    let has_log: bool = sqlx::query_scalar("SELECT to_regclass('events') IS NOT NULL")
        .fetch_one(&pool)
        .await?;
    anyhow::ensure!(
        has_log,
        "database `{name}` holds no Chronicle event log; check DATABASE_URL"
    );
    Ok(pool)
}

/// A lazily connected pool on a streaming replica (`CHRONICLE_READ_DATABASE_URL`): a replica
/// that is down when the instance starts does not stop it, and one that stops answering
/// fails a checkout within 2 s rather than the primary pool's 10.
///
/// # Errors
/// The URL is not a PostgreSQL URL.
pub fn replica_pool(database_url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = connect_options(database_url).map_err(|_| {
        anyhow::anyhow!("CHRONICLE_READ_DATABASE_URL `{database_url}` is not a PostgreSQL URL")
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(2))
        .idle_timeout(IDLE_CONNECTION)
        .connect_lazy_with(options))
}

async fn pool(options: &PgConnectOptions, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(IDLE_CONNECTION)
        .connect_with(options.clone())
        .await
        .map_err(|error| unreachable(options, &error))
}

/// Applies pending migrations.
///
/// # Errors
/// A migration failed or the history in the database does not match the binary's.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("applying database migrations")
}

/// True when the database answers and every migration of this binary has been applied.
pub async fn is_ready(pool: &PgPool) -> bool {
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await;
    match applied {
        Ok(applied) => MIGRATOR
            .iter()
            .all(|migration| applied.contains(&migration.version)),
        Err(_) => false,
    }
}

fn is_missing_database(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("3D000"))
}

/// Creates the database. Instances starting at once take turns under an advisory lock of
/// the maintenance database, and the later ones find it made.
async fn create_database(options: &PgConnectOptions) -> anyhow::Result<()> {
    let name = options.get_database().unwrap_or("chronicle").to_owned();
    let maintenance = options.clone().database("postgres");
    let mut conn = PgConnection::connect_with(&maintenance)
        .await
        .map_err(|error| unreachable(&maintenance, &error))?;
    let lock = format!("chronicle.create_database.{name}");
    sqlx::query("SELECT pg_advisory_lock(hashtextextended($1, 0))")
        .bind(&lock)
        .execute(&mut conn)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = if exists {
        Ok(())
    } else {
        sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
            .map(|_| tracing::info!(database = %name, "created database"))
    };
    // Closing the connection releases the lock.
    conn.close().await?;
    match created {
        Ok(()) => Ok(()),
        // Another client (not a Chronicle instance) created it meanwhile.
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => Ok(()),
        Err(error) => Err(error).with_context(|| format!("creating database `{name}`")),
    }
}

fn unreachable(options: &PgConnectOptions, error: &sqlx::Error) -> anyhow::Error {
    anyhow::anyhow!(
        "cannot connect to PostgreSQL at {}:{} (database `{}`, user `{}`): {error}. \
         Start PostgreSQL (e.g. `pg_ctlcluster 15 main start`) or point DATABASE_URL at a \
         running server.",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres"),
        options.get_username(),
    )
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgSslMode;

    use super::connect_options;

    fn ssl(url: &str) -> Option<PgSslMode> {
        connect_options(url).ok().map(|o| o.get_ssl_mode())
    }

    #[test]
    fn a_server_on_this_host_goes_without_tls_unless_asked() {
        for url in [
            "postgres://postgres@127.0.0.1:5432/db",
            "postgres://postgres@localhost/db",
            "postgres://postgres@[::1]:5432/db",
            "postgres:///db?host=/var/run/postgresql",
        ] {
            assert!(matches!(ssl(url), Some(PgSslMode::Disable)), "{url}");
        }
        let asked = "postgres://postgres@127.0.0.1/db?sslmode=require";
        assert!(matches!(ssl(asked), Some(PgSslMode::Require)));
        let remote = "postgres://postgres@db.example.com/db";
        assert!(matches!(ssl(remote), Some(PgSslMode::Prefer)));
    }

    #[test]
    fn connections_are_named_after_the_instance_unless_the_url_names_them() {
        let name = |url: &str| {
            connect_options(url)
                .ok()
                .and_then(|o| o.get_application_name().map(str::to_owned))
        };
        let plain = "postgres://postgres@127.0.0.1/db";
        let pid = format!(":{}", std::process::id());
        assert!(name(plain).is_some_and(|n| n.starts_with("chronicle@") && n.ends_with(&pid)));
        let named = "postgres://postgres@127.0.0.1/db?application_name=worker-2";
        assert_eq!(name(named).as_deref(), Some("worker-2"));
    }
}
