//! Configuration: every setting is a flag with an environment fallback and a default that
//! works on a fresh machine with a local PostgreSQL.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use secrecy::SecretString;

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// PostgreSQL connection URL; the database is created if it does not exist.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/chronicle",
        global = true
    )]
    pub database_url: String,

    /// Address the HTTP server listens on.
    #[arg(
        long,
        env = "CHRONICLE_LISTEN",
        default_value = "127.0.0.1:8080",
        global = true
    )]
    pub listen: SocketAddr,

    /// Maximum connections in the database pool.
    #[arg(
        long,
        env = "CHRONICLE_DB_MAX_CONNECTIONS",
        default_value_t = 20,
        global = true
    )]
    pub db_max_connections: u32,

    /// Log format: `text` for people, `json` for collectors.
    #[arg(
        long,
        env = "CHRONICLE_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,

    /// Export traces with OpenTelemetry (OTLP over HTTP, protobuf) to this URL, e.g.
    /// `http://collector:4318/v1/traces`. Off when unset.
    #[arg(long, env = "CHRONICLE_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,

    /// How long log consumers and workers with nothing to do wait for a notification before
    /// they look anyway, in milliseconds (a guard only: notifications wake them).
    #[arg(
        long,
        env = "CHRONICLE_LOG_POLL_MS",
        default_value_t = 300_000,
        global = true
    )]
    pub log_poll_ms: u64,

    /// How often a standby instance tries to take over a projector, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_STANDBY_RETRY_MS",
        default_value_t = 2000,
        global = true
    )]
    pub standby_retry_ms: u64,

    /// Snapshot an aggregate type every N events, e.g. `Batch=1,Simulation=20`. Batches
    /// snapshot on every command by default: their events carry request bodies, while their
    /// state is a few counters, so a snapshot is cheaper than any replay. Simulations every
    /// 20 events: each AI call's event holds the whole request sent. Transfer jobs every 20:
    /// a job of many studies collects a few events per study.
    #[arg(
        long,
        env = "CHRONICLE_SNAPSHOTS",
        value_delimiter = ',',
        value_parser = parse_snapshot,
        default_value = "Batch=1,Simulation=20,TransferJob=20",
        global = true
    )]
    pub snapshots: Vec<(String, usize)>,

    /// Most requests in one batch (the provider's limit is 50,000).
    #[arg(
        long,
        env = "CHRONICLE_BATCH_MAX_REQUESTS",
        default_value_t = 50_000,
        global = true
    )]
    pub batch_max_requests: u64,

    /// Close a building batch when its oldest request waited this long, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_BATCH_MAX_WAIT_MS",
        default_value_t = 600_000,
        global = true
    )]
    pub batch_max_wait_ms: u64,

    /// How often building batches are checked for their maximum wait, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_BATCH_CHECK_MS",
        default_value_t = 5_000,
        global = true
    )]
    pub batch_check_ms: u64,

    /// Base URL of the OpenAI-compatible batch provider (e.g. `https://api.openai.com`, or
    /// `http://127.0.0.1:8090` for `chronicle emulate-provider`). Without it, closed batches
    /// wait and no provider is called.
    #[arg(long, env = "CHRONICLE_PROVIDER_URL", global = true)]
    pub provider_url: Option<String>,

    /// Name of the environment variable that holds the provider's API key (never logged).
    #[arg(
        long,
        env = "CHRONICLE_PROVIDER_API_KEY_ENV",
        default_value = "OPENAI_API_KEY",
        global = true
    )]
    pub provider_api_key_env: String,

    /// A price table (TOML, as `ops/prices.toml`, which is the default) that replaces the
    /// shipped one: what each result costs.
    #[arg(long, env = "CHRONICLE_PRICES_FILE", global = true)]
    pub prices_file: Option<std::path::PathBuf>,

    /// Base URL of the Anthropic API (Message Batches), e.g. `https://api.anthropic.com`;
    /// batches of `/v1/messages` requests go there.
    #[arg(long, env = "CHRONICLE_ANTHROPIC_URL", global = true)]
    pub anthropic_url: Option<String>,

    /// Name of the environment variable that holds the Anthropic API key (never logged).
    #[arg(
        long,
        env = "CHRONICLE_ANTHROPIC_API_KEY_ENV",
        default_value = "ANTHROPIC_API_KEY",
        global = true
    )]
    pub anthropic_api_key_env: String,

    /// How often the provider driver polls batches at the provider, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_PROVIDER_POLL_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub provider_poll_ms: u64,

    /// Uploads and batch creations in flight at once, per provider.
    #[arg(
        long,
        env = "CHRONICLE_PROVIDER_UPLOADS",
        default_value_t = 1,
        global = true
    )]
    pub provider_uploads: usize,

    /// Polls and downloads in flight at once, per provider.
    #[arg(
        long,
        env = "CHRONICLE_PROVIDER_POLLS",
        default_value_t = 4,
        global = true
    )]
    pub provider_polls: usize,

    /// Talk to Azure OpenAI with this `api-version` (e.g. `2024-10-21`): `/openai/...` paths,
    /// the `api-key` header, and the base URL of the Azure resource.
    #[arg(long, env = "CHRONICLE_PROVIDER_AZURE_API_VERSION", global = true)]
    pub provider_azure_api_version: Option<String>,

    /// `OpenAI-Organization` header for provider calls.
    #[arg(long, env = "CHRONICLE_PROVIDER_ORGANIZATION", global = true)]
    pub provider_organization: Option<String>,

    /// `OpenAI-Project` header for provider calls.
    #[arg(long, env = "CHRONICLE_PROVIDER_PROJECT", global = true)]
    pub provider_project: Option<String>,

    /// Largest batch input file in bytes (the provider's limit is 200 MB).
    #[arg(
        long,
        env = "CHRONICLE_BATCH_MAX_BYTES",
        default_value_t = 190_000_000,
        global = true
    )]
    pub batch_max_bytes: u64,

    /// Name of the environment variable holding the key audit checkpoints are signed with
    /// (HMAC-SHA256; never logged). Without it, checkpoints are recorded unsigned.
    #[arg(
        long,
        env = "CHRONICLE_AUDIT_KEY_ENV",
        default_value = "CHRONICLE_AUDIT_KEY",
        global = true
    )]
    pub audit_key_env: String,

    /// Record a checkpoint of the whole log this often, in seconds (0: never; `chronicle
    /// audit checkpoint` records one on demand).
    #[arg(
        long,
        env = "CHRONICLE_AUDIT_CHECKPOINT_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub audit_checkpoint_secs: u64,

    /// How results are pushed to their owners.
    #[command(flatten)]
    pub delivery: DeliveryConfig,

    /// How simulations call their AI.
    #[command(flatten)]
    pub simulation: SimulationConfig,

    /// How transfer jobs run.
    #[command(flatten)]
    pub transfer: TransferConfig,

    /// Who may call, how much, and where the service may connect.
    #[command(flatten)]
    pub security: SecurityConfig,

    /// Where queries read.
    #[command(flatten)]
    pub replica: ReplicaConfig,
}

/// Reading from a streaming replica of the database.
#[derive(Debug, Clone, Args)]
pub struct ReplicaConfig {
    /// PostgreSQL URL of a streaming replica of `DATABASE_URL` (the same database on a
    /// standby server): queries and subscriptions' catch-up read from it. Off when unset.
    #[arg(long, env = "CHRONICLE_READ_DATABASE_URL", global = true)]
    pub read_database_url: Option<String>,

    /// Maximum connections to the replica.
    #[arg(
        long,
        env = "CHRONICLE_READ_DB_MAX_CONNECTIONS",
        default_value_t = 20,
        global = true
    )]
    pub read_db_max_connections: u32,

    /// How long a query that names a log position (`x-chronicle-after`) waits for the
    /// replica to replay past it before the primary serves it instead, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_REPLICA_WAIT_MS",
        default_value_t = 1000,
        global = true
    )]
    pub replica_wait_ms: u64,
}

/// Authentication, limits on callers, and the egress policy.
#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// Serve without authentication: every caller is an admin named `anonymous`. For local
    /// development only; the service says so loudly at start.
    #[arg(long, env = "CHRONICLE_INSECURE_DEV", global = true)]
    pub insecure_dev: bool,

    /// The pepper API keys are hashed with (HMAC-SHA256). When unset, a random pepper is made
    /// once and kept in the database, so a copy of the database alone suffices to test
    /// guesses; changing it invalidates every issued key.
    #[arg(
        long,
        env = "CHRONICLE_KEY_PEPPER",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub key_pepper: Option<SecretString>,

    /// The admin key installed on first start, while the client `admin` has no key
    /// (`chronicle keys new` makes one). When unset, a key is made and printed once.
    #[arg(
        long,
        env = "CHRONICLE_BOOTSTRAP_ADMIN_KEY",
        hide_env_values = true,
        value_parser = secret,
        global = true
    )]
    pub bootstrap_admin_key: Option<SecretString>,

    /// Mutations per second each client may send on average (0: no limit).
    #[arg(
        long,
        env = "CHRONICLE_RATE_LIMIT_PER_SEC",
        default_value_t = 50,
        global = true
    )]
    pub rate_limit_per_sec: u32,

    /// Mutations a client may send at once after being idle.
    #[arg(
        long,
        env = "CHRONICLE_RATE_LIMIT_BURST",
        default_value_t = 200,
        global = true
    )]
    pub rate_limit_burst: u32,

    /// Items of bulk mutations (a `submitRequests` list) per second each client may send on
    /// average; one whole bulk of 50,000 always passes a rested client.
    #[arg(
        long,
        env = "CHRONICLE_RATE_LIMIT_ITEMS_PER_SEC",
        default_value_t = 10_000,
        global = true
    )]
    pub rate_limit_items_per_sec: u32,

    /// Largest GraphQL request body, in bytes (a bulk submission of 50,000 small requests
    /// needs about 40 MB).
    #[arg(
        long,
        env = "CHRONICLE_MAX_BODY_BYTES",
        default_value_t = 64 * 1024 * 1024,
        global = true
    )]
    pub max_body_bytes: usize,

    /// A GraphQL request (not a subscription) taking longer is answered `UNAVAILABLE`, in
    /// seconds.
    #[arg(
        long,
        env = "CHRONICLE_REQUEST_TIMEOUT_SECS",
        default_value_t = 60,
        global = true
    )]
    pub request_timeout_secs: u64,

    /// Operations (subscriptions, queries, mutations) one websocket may run at once; one
    /// more is refused with `LIMIT_EXCEEDED` and the socket goes on.
    #[arg(
        long,
        env = "CHRONICLE_WS_MAX_OPERATIONS",
        default_value_t = 100,
        global = true
    )]
    pub ws_max_operations: usize,

    /// Private, loopback or link-local networks webhook and DICOMweb targets may still reach,
    /// e.g. `10.20.0.0/16,127.0.0.1/32` (by default only public addresses are allowed).
    #[arg(
        long,
        env = "CHRONICLE_EGRESS_ALLOW",
        value_delimiter = ',',
        global = true
    )]
    pub egress_allow: Vec<ipnet::IpNet>,
}

fn secret(text: &str) -> Result<SecretString, String> {
    Ok(SecretString::from(text))
}

/// Settings of the transfer runner and who needs no verify.
#[derive(Debug, Clone, Args)]
pub struct TransferConfig {
    /// Clients whose transfer jobs need no admin verify (`*`: everyone); admins' jobs never
    /// need one.
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_TRUSTED",
        value_delimiter = ',',
        global = true
    )]
    pub transfer_trusted: Vec<String>,

    /// Transfer tasks (studies) moved at once.
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_CONCURRENCY",
        default_value_t = 4,
        global = true
    )]
    pub transfer_concurrency: usize,

    /// A task running longer fails transiently (and is retried), in seconds.
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_TASK_TIMEOUT_SECS",
        default_value_t = 1_200,
        global = true
    )]
    pub transfer_task_timeout_secs: u64,

    /// Wait before a task's first retry after a transient failure, in milliseconds; it
    /// doubles with each further attempt (at most 10 minutes).
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_RETRY_WAIT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub transfer_retry_wait_ms: u64,

    /// Longest wait for a DICOMweb server to connect or to send more data, in seconds (not a
    /// limit on a whole transfer, which may take longer).
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_HTTP_TIMEOUT_SECS",
        default_value_t = 120,
        global = true
    )]
    pub transfer_http_timeout_secs: u64,

    /// How often the runner looks for work, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_TRANSFER_POLL_MS",
        default_value_t = 500,
        global = true
    )]
    pub transfer_poll_ms: u64,
}

/// Settings of the simulation responder (OpenAI-compatible Chat Completions).
#[derive(Debug, Clone, Args)]
pub struct SimulationConfig {
    /// Base URL of the Chat Completions API for simulations (no trailing `/v1`); without
    /// it, `--provider-url` (and its key) is used; without either, AI calls wait.
    #[arg(long, env = "CHRONICLE_CHAT_URL", global = true)]
    pub chat_url: Option<String>,

    /// Name of the environment variable holding the Chat Completions API key (never logged).
    #[arg(
        long,
        env = "CHRONICLE_CHAT_API_KEY_ENV",
        default_value = "OPENAI_API_KEY",
        global = true
    )]
    pub chat_api_key_env: String,

    /// Timeout of one Chat Completions attempt, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_CHAT_TIMEOUT_MS",
        default_value_t = 60_000,
        global = true
    )]
    pub chat_timeout_ms: u64,

    /// Retries of a failing AI call (connection errors, timeouts, 408, 429, 5xx) before the
    /// simulation fails.
    #[arg(
        long,
        env = "CHRONICLE_CHAT_RETRIES",
        default_value_t = 3,
        global = true
    )]
    pub chat_retries: usize,

    /// How often the responder looks for AI calls to make, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_SIMULATION_POLL_MS",
        default_value_t = 200,
        global = true
    )]
    pub simulation_poll_ms: u64,
}

/// Settings of the delivery worker (webhooks and RabbitMQ).
#[derive(Debug, Clone, Args)]
pub struct DeliveryConfig {
    /// RabbitMQ broker for `rabbitmqQueue` / `rabbitmqExchange` deliveries.
    #[arg(
        long,
        env = "CHRONICLE_RABBITMQ_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        global = true
    )]
    pub rabbitmq_url: String,

    /// Deliveries in flight at once.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_CONCURRENCY",
        default_value_t = 50,
        global = true
    )]
    pub delivery_concurrency: usize,

    /// Deliveries in flight at once to one target (a webhook origin, or the broker), so a
    /// slow receiver cannot take every slot.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_PER_TARGET",
        default_value_t = 10,
        global = true
    )]
    pub delivery_per_target: usize,

    /// Timeout of one webhook call or broker publish, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub delivery_timeout_ms: u64,

    /// Attempts per delivery round before the request becomes `delivery_failed`.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_MAX_ATTEMPTS",
        default_value_t = 10,
        global = true
    )]
    pub delivery_max_attempts: u32,

    /// A round gives up when its next attempt would start later than this after the round
    /// began, in seconds.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_DEADLINE_SECS",
        default_value_t = 86_400,
        global = true
    )]
    pub delivery_deadline_secs: u64,

    /// First retry delay in milliseconds; it doubles per attempt, plus up to 100% jitter.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_BACKOFF_MIN_MS",
        default_value_t = 1_000,
        global = true
    )]
    pub delivery_backoff_min_ms: u64,

    /// Longest retry delay before jitter, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_BACKOFF_MAX_MS",
        default_value_t = 600_000,
        global = true
    )]
    pub delivery_backoff_max_ms: u64,

    /// How often the delivery worker looks for due deliveries, in milliseconds.
    #[arg(
        long,
        env = "CHRONICLE_DELIVERY_POLL_MS",
        default_value_t = 250,
        global = true
    )]
    pub delivery_poll_ms: u64,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The fallback poll interval of log consumers.
    pub fn log_poll(&self) -> Duration {
        Duration::from_millis(self.log_poll_ms)
    }

    /// The audit signing key, if its variable is set.
    pub fn audit_key(&self) -> Option<Vec<u8>> {
        std::env::var(&self.audit_key_env)
            .ok()
            .filter(|key| !key.is_empty())
            .map(String::into_bytes)
    }

    /// The standby retry interval of projectors.
    pub fn standby_retry(&self) -> Duration {
        Duration::from_millis(self.standby_retry_ms)
    }
}

fn parse_snapshot(text: &str) -> Result<(String, usize), String> {
    let (aggregate, every) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}` is not AggregateType=N"))?;
    let every: usize = every
        .parse()
        .map_err(|_| format!("`{every}` is not a whole number of events"))?;
    if every == 0 {
        return Err("snapshot interval must be at least 1".into());
    }
    Ok((aggregate.to_owned(), every))
}
