//! `TestApp`: the real service (router, log waker, projectors) on a random port.

use std::time::Duration;

use chronicle::command::{CommandContext, CommandError, CommandReceipt, Commands};
use chronicle::config::{
    Config, DeliveryConfig, LogFormat, ReplicaConfig, SecurityConfig, SimulationConfig,
    TransferConfig,
};
use chronicle::startup::{Application, Wiring};
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Ledger, LedgerCommand, TestDb};

/// The bootstrap admin key of every test instance (a test fixture, not a secret).
pub const ADMIN_KEY: &str = "chr_a024110d36e0a343_CkzGIm5zrhVFeiLVt6-9MhBhuMFyKzbEqaf2LpTr2q0";

/// The pepper of every test instance.
const TEST_PEPPER: &str = "test pepper";

/// The vault test instances seal personal data with, for readers built outside an instance.
pub fn vault(pool: &PgPool) -> chronicle::privacy::Vault {
    chronicle::privacy::Vault::new(pool.clone(), TEST_PEPPER.as_bytes())
}

/// The default test configuration: loopback allowed as an egress target, no rate limit.
fn security_config() -> SecurityConfig {
    SecurityConfig {
        insecure_dev: false,
        key_pepper: Some(TEST_PEPPER.into()),
        bootstrap_admin_key: Some(ADMIN_KEY.into()),
        rate_limit_per_sec: 0,
        rate_limit_burst: 0,
        rate_limit_items_per_sec: 0,
        max_body_bytes: 64 * 1024 * 1024,
        request_timeout_secs: 60,
        ws_max_operations: 100,
        egress_allow: vec!["127.0.0.1/32".parse().expect("network")],
    }
}

/// A running instance of the service.
pub struct TestApp {
    pub address: String,
    pub pool: PgPool,
    pub commands: Commands,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    http: reqwest::Client,
}

impl TestApp {
    /// Starts an instance on `db`, tagged `name` in `pg_stat_activity.application_name`.
    pub async fn spawn(db: &TestDb, name: &str) -> Self {
        Self::spawn_with(db, name, Vec::new()).await
    }

    /// Like [`TestApp::spawn`], with snapshot settings.
    pub async fn spawn_with(db: &TestDb, name: &str, snapshots: Vec<(String, usize)>) -> Self {
        Self::spawn_configured(db, name, |config| config.snapshots = snapshots).await
    }

    /// Like [`TestApp::spawn`], with any configuration change.
    pub async fn spawn_configured(
        db: &TestDb,
        name: &str,
        change: impl FnOnce(&mut Config),
    ) -> Self {
        Self::try_spawn_configured(db, name, change)
            .await
            .unwrap_or_else(|error| panic!("build app: {error:#}"))
    }

    /// Like [`TestApp::spawn_configured`], answering the error an instance refuses to start
    /// with.
    pub async fn try_spawn_configured(
        db: &TestDb,
        name: &str,
        change: impl FnOnce(&mut Config),
    ) -> anyhow::Result<Self> {
        // Logs only: no exporter to flush.
        drop(chronicle::telemetry::init(LogFormat::Text, None));
        let options: PgConnectOptions = db.options.clone().application_name(name);
        let mut config = Config {
            database_url: String::new(),
            listen: "127.0.0.1:0".parse().expect("address"),
            db_max_connections: 20,
            log_format: LogFormat::Text,
            otlp_endpoint: None,
            log_poll_ms: 200,
            standby_retry_ms: 100,
            snapshots: vec![("Batch".into(), 1)],
            batch_max_requests: 50_000,
            batch_max_wait_ms: 600_000,
            batch_check_ms: 100,
            provider_url: None,
            provider_api_key_env: "CHRONICLE_TEST_PROVIDER_KEY".into(),
            provider_poll_ms: 50,
            provider_uploads: 1,
            provider_polls: 4,
            provider_organization: None,
            provider_azure_api_version: None,
            prices_file: None,
            anthropic_url: None,
            anthropic_api_key_env: "CHRONICLE_TEST_ANTHROPIC_KEY".into(),
            provider_project: None,
            batch_max_bytes: 190_000_000,
            audit_key_env: "CHRONICLE_TEST_AUDIT_KEY".into(),
            audit_checkpoint_secs: 0,
            delivery: DeliveryConfig {
                rabbitmq_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
                delivery_concurrency: 50,
                delivery_per_target: 10,
                delivery_timeout_ms: 2_000,
                delivery_max_attempts: 10,
                delivery_deadline_secs: 3_600,
                delivery_backoff_min_ms: 50,
                delivery_backoff_max_ms: 1_000,
                delivery_poll_ms: 50,
            },
            simulation: SimulationConfig {
                chat_url: None,
                chat_api_key_env: "CHRONICLE_TEST_CHAT_KEY".into(),
                chat_timeout_ms: 2_000,
                chat_retries: 2,
                simulation_poll_ms: 50,
            },
            transfer: TransferConfig {
                transfer_trusted: vec!["*".into()],
                transfer_concurrency: 2,
                transfer_task_timeout_secs: 60,
                transfer_retry_wait_ms: 50,
                transfer_http_timeout_secs: 10,
                transfer_poll_ms: 50,
            },
            security: security_config(),
            replica: ReplicaConfig {
                read_database_url: None,
                read_db_max_connections: 10,
                replica_wait_ms: 1_000,
            },
        };
        change(&mut config);
        let pool = chronicle::db::connect(&options, config.db_max_connections)
            .await
            .expect("pool");
        let mut wiring = Wiring::standard();
        wiring.upcasters = wiring.upcasters.register::<Ledger>();
        let app = Application::build(&config, pool.clone(), options, wiring).await?;
        let address = format!("127.0.0.1:{}", app.local_addr().expect("address").port());
        let commands = app.commands();
        let shutdown = app.shutdown_token();
        let server = tokio::spawn(async move {
            app.run_until_stopped().await.expect("app stopped cleanly");
        });
        Ok(Self {
            address,
            pool,
            commands,
            shutdown,
            server,
            http: reqwest::Client::new(),
        })
    }

    /// Stops the instance: server, projectors, and its connections.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.server.await.expect("server task");
    }

    /// Kills the instance without a graceful stop: its tasks are dropped mid-way, as in a
    /// crash (the process's connections close with it).
    pub async fn kill(self) {
        self.server.abort();
        let _ = self.server.await;
        self.pool.close().await;
    }

    /// Posts a GraphQL request as the bootstrap admin and returns the whole response body.
    pub async fn graphql(&self, query: &str, variables: Value) -> Value {
        self.graphql_as(ADMIN_KEY, query, variables).await
    }

    /// Posts a GraphQL request with exactly `headers` (no key unless one is among them); the
    /// HTTP status and the body.
    pub async fn post_with(
        &self,
        headers: &[(&str, &str)],
        query: &str,
        variables: Value,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!("http://{}/graphql", self.address))
            .json(&json!({ "query": query, "variables": variables }));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.expect("POST");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON"))
    }

    /// Posts a GraphQL request with API key `key` and returns the whole response body.
    pub async fn graphql_as(&self, key: &str, query: &str, variables: Value) -> Value {
        self.post_graphql(key, None, query, variables).await
    }

    /// Like [`TestApp::graphql_as`], under the correlation id `correlation_id`.
    pub async fn graphql_correlated(
        &self,
        key: &str,
        correlation_id: &str,
        query: &str,
        variables: Value,
    ) -> Value {
        self.post_graphql(key, Some(correlation_id), query, variables)
            .await
    }

    async fn post_graphql(
        &self,
        key: &str,
        correlation_id: Option<&str>,
        query: &str,
        variables: Value,
    ) -> Value {
        let mut request = self
            .http
            .post(format!("http://{}/graphql", self.address))
            .bearer_auth(key);
        if let Some(correlation_id) = correlation_id {
            request = request.header("x-correlation-id", correlation_id);
        }
        request
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .expect("POST /graphql")
            .json()
            .await
            .expect("JSON response")
    }

    /// Creates the client `id` (role `CLIENT` or `ADMIN`) and returns a key of it.
    pub async fn client_key(&self, id: &str, role: &str) -> String {
        let created = self
            .graphql(
                &format!("mutation {{ createClient(id: \"{id}\", role: {role}) {{ version }} }}"),
                json!({}),
            )
            .await;
        assert!(created["errors"].is_null(), "{created}");
        let issued = self
            .graphql(
                "mutation($id: String!) { issueKey(clientId: $id, label: \"test\") { key } }",
                json!({ "id": id }),
            )
            .await;
        issued["data"]["issueKey"]["key"]
            .as_str()
            .unwrap_or_else(|| panic!("{issued}"))
            .to_owned()
    }

    /// The `eventLog` edges of `query` once the log shows `count` of them.
    ///
    /// Events derived asynchronously (by projectors and workers) appear a moment after the
    /// write returned.
    pub async fn log_edges(&self, query: &str, count: usize) -> Vec<Value> {
        super::eventually(Duration::from_secs(10), "events in the log", || async {
            let response = self.graphql(query, json!({})).await;
            let edges = response["data"]["eventLog"]["edges"].as_array()?.clone();
            (edges.len() == count).then_some(edges)
        })
        .await
    }

    /// A plain GET.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("http://{}{path}", self.address))
            .send()
            .await
            .expect("GET")
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/graphql", self.address)
    }

    /// Runs a ledger command as actor `tester`.
    pub async fn ledger(
        &self,
        id: &str,
        command: LedgerCommand,
    ) -> Result<CommandReceipt, CommandError> {
        self.commands
            .execute::<Ledger>(&context(), id, command, &(), None)
            .await
    }

    /// Waits until the `aggregate_index` projection shows `version` for the ledger `id`.
    pub async fn projected(&self, id: &str, version: i64) {
        super::eventually(Duration::from_secs(15), "projection", || async {
            let seen = chronicle_projections::aggregate_index::version(&self.pool, "Ledger", id)
                .await
                .expect("read aggregate_index");
            (seen == Some(version)).then_some(())
        })
        .await;
    }
}

pub fn context() -> CommandContext {
    CommandContext {
        actor: "tester".into(),
        correlation_id: "test-correlation".into(),
        causation_id: None,
    }
}
