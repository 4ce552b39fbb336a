//! The service as a child process of the test: started, killed with SIGKILL, restarted on the
//! same port, stopped with SIGINT, and its resident memory read from `/proc`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::TestDb;

/// The bootstrap admin key of every fault-test server (a fixture, not a secret).
pub const ADMIN_KEY: &str = "chr_5f0c9a1e7b3d2468_q0Yx3kTQ8n1bLr4wVfZc2pHs9mJd6eAu7oNiKyGtB5E";

/// The key pepper of every fault-test server.
pub const PEPPER: &str = "fault test pepper";

/// How long a start may take (a debug build on a loaded machine is slow to start).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The service's binary: `CHRONICLE_FAULTS_SERVER` when set (`.ci/run` points it at the
/// release build, as the service runs in production), else the one built with this test.
pub fn binary() -> PathBuf {
    std::env::var_os("CHRONICLE_FAULTS_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_chronicle")),
        PathBuf::from,
    )
}

/// A `chronicle serve` process on a fixed port of 127.0.0.1.
pub struct Server {
    child: Option<Child>,
    port: u16,
    database_url: String,
    settings: Vec<(String, String)>,
    http: reqwest::Client,
}

impl Server {
    /// Starts the service on `db` with the fault tests' defaults changed by `settings`
    /// (environment variables), and waits until `/ready` answers 200.
    pub async fn start(db: &TestDb, settings: &[(&str, String)]) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let mut server = Self {
            child: None,
            port,
            database_url: db.url(),
            settings: settings
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("http client"),
        };
        server.restart().await;
        server
    }

    /// The GraphQL endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/graphql", self.port)
    }

    /// The GraphQL websocket endpoint.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/graphql", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts the process again (after [`Server::kill`]) and waits until it is ready.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        let child = Command::new(binary())
            .arg("serve")
            .env("DATABASE_URL", &self.database_url)
            .env("CHRONICLE_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("CHRONICLE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .env("CHRONICLE_KEY_PEPPER", PEPPER)
            .env("CHRONICLE_RATE_LIMIT_PER_SEC", "0")
            .env("CHRONICLE_EGRESS_ALLOW", "127.0.0.1/32")
            .env("CHRONICLE_REQUEST_TIMEOUT_SECS", "10")
            .env("CHRONICLE_LOG_POLL_MS", "200")
            .env("CHRONICLE_STANDBY_RETRY_MS", "100")
            .env("CHRONICLE_BATCH_CHECK_MS", "100")
            .env("CHRONICLE_BATCH_MAX_WAIT_MS", "1000")
            .env("CHRONICLE_PROVIDER_POLL_MS", "100")
            .env(
                "CHRONICLE_PROVIDER_API_KEY_ENV",
                "CHRONICLE_FAULTS_PROVIDER_KEY",
            )
            .env("CHRONICLE_FAULTS_PROVIDER_KEY", "sk-fault-tests")
            .env(
                "CHRONICLE_CHAT_API_KEY_ENV",
                "CHRONICLE_FAULTS_PROVIDER_KEY",
            )
            .env("CHRONICLE_SIMULATION_POLL_MS", "50")
            .env("CHRONICLE_DELIVERY_POLL_MS", "50")
            .env("CHRONICLE_DELIVERY_BACKOFF_MIN_MS", "50")
            .env("CHRONICLE_DELIVERY_BACKOFF_MAX_MS", "1000")
            .env("CHRONICLE_DELIVERY_TIMEOUT_MS", "2000")
            .env("CHRONICLE_TRANSFER_POLL_MS", "50")
            .env("RUST_LOG", "error")
            .env_remove("CHRONICLE_INSECURE_DEV")
            .envs(self.settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start chronicle serve");
        self.child = Some(child);
        let started = Instant::now();
        while !self.ready().await {
            let child = self.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("child status") {
                panic!("the service exited while starting: {status}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the service was not ready within {START_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// True when `/ready` answers 200 (database reachable and migrated).
    pub async fn ready(&self) -> bool {
        self.ready_status().await == Some(200)
    }

    /// The status `/ready` answers with, or `None` when nothing answers within 5 s.
    pub async fn ready_status(&self) -> Option<u16> {
        let ready = format!("http://127.0.0.1:{}/ready", self.port);
        let answer = self
            .http
            .get(ready)
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        answer.ok().map(|a| a.status().as_u16())
    }

    /// Kills the process with SIGKILL: no shutdown code runs, as in a crash or an OOM kill.
    pub async fn kill(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        child.kill().await.expect("SIGKILL");
    }

    /// Stops the process with SIGINT (graceful) and checks that it exits cleanly.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("the server is running");
        let pid = child.id().expect("pid").to_string();
        let signalled = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .expect("kill -INT");
        assert!(signalled.success());
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the service stops within 30 s of SIGINT")
            .expect("wait");
        assert!(status.success(), "the service failed on shutdown: {status}");
    }

    /// The process's resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self.pid().expect("the server is running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// Posts a GraphQL request as the admin; the whole response, or the transport error.
    pub async fn try_graphql(&self, query: &str, variables: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(self.url())
            .bearer_auth(ADMIN_KEY)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        response.json().await.map_err(|e| e.to_string())
    }

    /// Posts a GraphQL request as the admin and returns the whole response.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.try_graphql(query, variables)
            .await
            .unwrap_or_else(|error| panic!("GraphQL call failed: {error}"))
    }

    /// Waits until every projection has caught up with the log.
    pub async fn caught_up(&self) {
        super::eventually(
            Duration::from_secs(120),
            "projections to catch up",
            || async {
                let response = self.graphql("{ projections { lag } }", json!({})).await;
                let lags = response["data"]["projections"].as_array()?.clone();
                lags.iter().all(|p| p["lag"] == 0).then_some(())
            },
        )
        .await;
    }
}
