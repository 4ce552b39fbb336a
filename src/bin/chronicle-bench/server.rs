//! The service under test: its fresh database and its process, whose resident memory is
//! sampled while it works.

use std::ffi::OsString;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chronicle::security::NewKey;
use clap::Parser;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// First argument that makes this binary run `chronicle` (the service's own command line).
pub(crate) const CHILD: &str = "__chronicle";

/// The arguments after [`CHILD`] when this process is a child.
pub(crate) fn child_arguments() -> Option<Vec<OsString>> {
    let mut arguments = std::env::args_os().skip(1);
    (arguments.next()? == CHILD).then(|| arguments.collect())
}

/// Runs the service's command line: the same code as the `chronicle` binary.
pub(crate) async fn run_child(arguments: Vec<OsString>) -> anyhow::Result<()> {
    let program = std::iter::once(OsString::from("chronicle"));
    chronicle::cli::Cli::parse_from(program.chain(arguments))
        .run()
        .await
}

/// A database of the bench's own, created empty and dropped at the end.
/// The `application_name` of the service's connections, to tell them from the bench's.
pub(crate) const SERVICE_APPLICATION: &str = "chronicle-bench-service";

pub(crate) struct BenchDatabase {
    server: PgConnectOptions,
    name: String,
    /// The database's URL, for the service.
    service_url: String,
    /// A pool on it, for the limits and for checks.
    pub(crate) pool: PgPool,
}

impl BenchDatabase {
    /// Creates `chronicle_bench_<pid>` on the server of `database_url`.
    pub(crate) async fn create(database_url: &str) -> anyhow::Result<Self> {
        let server = chronicle::db::connect_options(database_url)?;
        let name = format!("chronicle_bench_{}", std::process::id());
        let mut admin = server.clone().connect().await.with_context(|| {
            format!("connecting to {database_url} (is PostgreSQL running there?)")
        })?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await?;
        admin.close().await?;
        let options = server.clone().database(&name);
        let url = options.to_url_lossy().to_string();
        let separator = if url.contains('?') { '&' } else { '?' };
        let service_url = format!("{url}{separator}application_name={SERVICE_APPLICATION}");
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(options)
            .await?;
        Ok(Self {
            server,
            name,
            service_url,
            pool,
        })
    }

    /// Drops the database, unless asked to keep it.
    pub(crate) async fn drop_unless(&self, keep: bool) -> anyhow::Result<()> {
        self.pool.close().await;
        if keep {
            eprintln!("kept database {}", self.name);
            return Ok(());
        }
        let mut admin = self.server.clone().connect().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut admin)
        .await?;
        admin.close().await?;
        Ok(())
    }

    /// A child process running `chronicle <arguments>` against this database, its
    /// connections named [`SERVICE_APPLICATION`].
    fn command(&self, arguments: &[&str]) -> anyhow::Result<Command> {
        let exe = std::env::current_exe().context("locating the bench binary")?;
        let mut command = Command::new(exe);
        command
            .arg(CHILD)
            .args(arguments)
            .env("DATABASE_URL", &self.service_url)
            .env("CHRONICLE_KEY_PEPPER", "chronicle bench pepper")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        Ok(command)
    }

    /// Runs `chronicle projections rebuild <name>` as a process; its output and peak memory.
    pub(crate) async fn rebuild(&self, projection: &str) -> anyhow::Result<(String, u64)> {
        let child = self
            .command(&["projections", "rebuild", projection])?
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the rebuild")?;
        let memory = Memory::watch(child.id().context("rebuild pid")?);
        let output = child.wait_with_output().await?;
        let peak = memory.peak();
        ensure!(output.status.success(), "rebuilding {projection} failed");
        Ok((String::from_utf8_lossy(&output.stdout).into_owned(), peak))
    }
}

/// The service, serving on a free port of 127.0.0.1.
pub(crate) struct Server {
    child: Child,
    /// The GraphQL endpoint.
    pub(crate) url: String,
    /// The GraphQL websocket endpoint.
    pub(crate) ws_url: String,
    /// The bootstrap admin key it was started with.
    pub(crate) key: String,
    /// Its resident memory.
    pub(crate) memory: Memory,
}

/// How long the service may take to start.
const START_TIMEOUT: Duration = Duration::from_secs(120);

impl Server {
    /// Starts `chronicle serve` on `database` with a fresh admin key, no rate limit and
    /// batches that close only when full or flushed, and waits until it is ready.
    pub(crate) async fn start(database: &BenchDatabase) -> anyhow::Result<Self> {
        let key = NewKey::generate().token.expose_secret().to_owned();
        Self::start_with(database, key).await
    }

    /// Starts another instance of this service on the same database (same admin key).
    pub(crate) async fn another(&self, database: &BenchDatabase) -> anyhow::Result<Self> {
        Self::start_with(database, self.key.clone()).await
    }

    async fn start_with(database: &BenchDatabase, key: String) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = database
            .command(&["serve"])?
            .env("CHRONICLE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CHRONICLE_BOOTSTRAP_ADMIN_KEY", &key)
            .env("CHRONICLE_RATE_LIMIT_PER_SEC", "0")
            .env("CHRONICLE_BATCH_MAX_WAIT_MS", "86400000")
            .env_remove("CHRONICLE_INSECURE_DEV")
            .spawn()
            .context("starting the service")?;
        let memory = Memory::watch(child.id().context("service pid")?);
        let mut server = Self {
            child,
            url: format!("http://127.0.0.1:{port}/graphql"),
            ws_url: format!("ws://127.0.0.1:{port}/graphql"),
            key,
            memory,
        };
        server.wait_ready(port).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self, port: u16) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{port}/ready");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the service exited while starting: {status}");
            }
            let answer = http.get(&ready).send().await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return Ok(());
            }
            ensure!(
                started.elapsed() < START_TIMEOUT,
                "the service was not ready within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the service the way an operator does (SIGINT, a graceful shutdown).
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let signalled = Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status()
                .await?;
            ensure!(signalled.success(), "could not signal the service");
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        match status {
            Ok(status) => ensure!(status?.success(), "the service failed on shutdown"),
            Err(_) => self.child.kill().await?,
        }
        Ok(())
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The peak resident memory of a process, sampled every 20 ms from `/proc`.
pub(crate) struct Memory {
    peak: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl Memory {
    fn watch(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (sampled, stopped) = (peak.clone(), stop.clone());
        tokio::spawn(async move {
            let path = format!("/proc/{pid}/status");
            loop {
                if let Some(bytes) = resident_bytes(&path).await {
                    sampled.fetch_max(bytes, Ordering::Relaxed);
                }
                tokio::select! {
                    () = stopped.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        });
        Self { peak, stop }
    }

    /// The peak since the last call (or since the start), in bytes; starts a new period.
    pub(crate) fn take_peak(&self) -> u64 {
        self.peak.swap(0, Ordering::Relaxed)
    }

    /// The peak so far, in bytes; stops sampling.
    fn peak(self) -> u64 {
        self.stop.cancel();
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for Memory {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `VmRSS` of `/proc/<pid>/status`, in bytes.
async fn resident_bytes(path: &str) -> Option<u64> {
    let status = tokio::fs::read_to_string(path).await.ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kilobytes: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kilobytes * 1024)
}
