//! Wiring: the event store, the log, roles, projections, workers, the API and the HTTP server
//! of one instance.

mod workers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chronicle_aggregates::batch::{Batch, BatchLimits};
use chronicle_aggregates::client::Client;
use chronicle_aggregates::dicom_server::DicomServer;
use chronicle_aggregates::query::QueryJob;
use chronicle_aggregates::request::Request;
use chronicle_aggregates::simulation::Simulation;
use chronicle_aggregates::subject::Subject;
use chronicle_aggregates::transfer::TransferJob;
use chronicle_aggregates::Upcasters;
use chronicle_projections::Projector;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{build_schema, ApiServices};
use crate::command::Commands;
use crate::config::Config;
use crate::delivery::WebhookSecrets;
use crate::http::{router, AppState, HttpLimits};
use crate::llm::{LlmActions, Providers, Submitter};
use crate::log::{CommittedFeed, LiveLog, LogReader, LogWaker};
use crate::privacy::Vault;
use crate::projection::{self, Projectors, ReadModels, Rebuilder, Roles};
use crate::reads::{ReadRouter, Reads, Replica};
use crate::security::{
    bootstrap_admin, Authenticator, EgressPolicy, KeyHasher, KnownKeys, Pepper, RateLimiter,
    RateLimits, Revocations,
};
use crate::simulation::SimulationActions;
use crate::store::{EventStores, InlineProjectors};
use crate::transfer::TransferActions;

/// Connections for idempotency locks: at most this many keyed commands run at once.
const IDEMPOTENCY_LOCKS: u32 = 8;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The domain parts an instance runs: every aggregate's upcasters and every projector.
pub struct Wiring {
    /// Upcasters of every aggregate type in the log.
    pub upcasters: Upcasters,
    /// The projectors to run.
    pub projectors: Vec<Arc<dyn Projector>>,
}

impl Wiring {
    /// Everything Chronicle has. Each aggregate registers its upcasters here.
    pub fn standard() -> Self {
        Self {
            upcasters: Upcasters::default()
                .register::<Request>()
                .register::<Batch>()
                .register::<Simulation>()
                .register::<TransferJob>()
                .register::<QueryJob>()
                .register::<DicomServer>()
                .register::<Client>()
                .register::<Subject>(),
            projectors: projection::standard(),
        }
    }
}

/// What the parts of one instance share.
struct Core {
    pool: PgPool,
    vault: Vault,
    reader: LogReader,
    /// The streaming replica queries read from, if configured.
    replica: Option<Replica>,
    waker: LogWaker,
    roles: Roles,
    /// What the group committer hands the live log.
    committed: CommittedFeed,
    commands: Commands,
    egress: EgressPolicy,
    shutdown: CancellationToken,
}

impl Core {
    /// The store, the log, the roles connection and the command path over `pool`, and the
    /// instance's tasks so far (the roles connection's).
    fn new(
        config: &Config,
        pool: PgPool,
        options: &PgConnectOptions,
        pepper: &Pepper,
        upcasters: Upcasters,
    ) -> anyhow::Result<(Self, JoinSet<()>)> {
        let shutdown = CancellationToken::new();
        let committed = CommittedFeed::default();
        let vault = Vault::new(pool.clone(), pepper.as_bytes());
        let stores = EventStores::new(
            pool.clone(),
            &config.snapshots,
            upcasters,
            vault.clone(),
            InlineProjectors::new(projection::inline()),
            committed.clone(),
        );
        let reader = LogReader::new(pool.clone(), stores.upcasters(), vault.clone());
        let replica = match &config.replica.read_database_url {
            Some(url) => {
                let pool = crate::db::replica_pool(url, config.replica.read_db_max_connections)?;
                let log = LogReader::new(pool.clone(), stores.upcasters(), vault.clone());
                Some(Replica::new(Reads { pool, log }))
            }
            None => None,
        };
        let waker = LogWaker::start(&pool, config.log_poll(), shutdown.clone());
        let (roles, holding) = Roles::serving(
            options.clone(),
            config.standby_retry(),
            shutdown.clone(),
            waker.instances_changed(),
        );
        let locks = PgPoolOptions::new()
            .max_connections(IDEMPOTENCY_LOCKS)
            .acquire_timeout(Duration::from_secs(30))
            .idle_timeout(crate::db::IDLE_CONNECTION)
            .connect_lazy_with(options.clone());
        let mut workers = JoinSet::new();
        // With the workers: a crash that drops them drops the roles' connection too.
        workers.spawn(holding);
        let core = Self {
            commands: Commands::new(stores, locks),
            egress: EgressPolicy::new(config.security.egress_allow.clone()),
            pool,
            vault,
            reader,
            replica,
            waker,
            committed,
            roles,
            shutdown,
        };
        Ok((core, workers))
    }
}

/// The GraphQL schema and what the HTTP layer needs: keys (with the bootstrap admin's
/// installed) and the revocations that close sockets.
async fn api_state(
    config: &Config,
    core: &Core,
    pepper: &Pepper,
    projectors: &[Arc<dyn Projector>],
    providers: Providers,
) -> anyhow::Result<AppState> {
    let security = &config.security;
    let live = LiveLog::start(
        core.reader.clone(),
        &core.waker,
        &core.committed,
        core.shutdown.clone(),
    )
    .await
    .context("reading the log's head")?;
    let live = match &core.replica {
        Some(replica) => live.catching_up_from(replica.clone()),
        None => live,
    };
    let hasher = KeyHasher::new(pepper.as_bytes());
    let known_keys = KnownKeys::default();
    let commands = &core.commands;
    let limits = BatchLimits {
        max_requests: config.batch_max_requests,
        max_bytes: config.batch_max_bytes,
    };
    let rate_limiter = RateLimiter::new(RateLimits {
        per_second: security.rate_limit_per_sec,
        burst: security.rate_limit_burst,
        items_per_second: security.rate_limit_items_per_sec,
    });
    rate_limiter.follow(core.roles.instances(), core.shutdown.clone());
    let schema = build_schema(ApiServices {
        pool: core.pool.clone(),
        reader: core.reader.clone(),
        live: live.clone(),
        submitter: Submitter::new(commands.clone(), core.pool.clone(), limits, providers),
        actions: LlmActions::new(commands.clone(), core.pool.clone()),
        secrets: Arc::new(WebhookSecrets::new(core.pool.clone())),
        simulations: SimulationActions::new(commands.clone()),
        transfers: TransferActions::new(
            commands.clone(),
            config.transfer.transfer_trusted.clone(),
            core.egress.clone(),
        ),
        egress: core.egress.clone(),
        rate_limiter: rate_limiter.clone(),
        hasher: hasher.clone(),
        vault: core.vault.clone(),
        commands: commands.clone(),
        known_keys: known_keys.clone(),
        projectors: Projectors::new(projectors),
        roles: core.roles.clone(),
    });
    let (authenticator, revocations) = if security.insecure_dev {
        tracing::warn!("*** --insecure-dev: NO AUTHENTICATION. Every caller is an admin. Never expose this instance. ***");
        (None, None)
    } else {
        let bootstrap = security.bootstrap_admin_key.as_ref();
        bootstrap_admin(commands, &core.pool, &hasher, bootstrap).await?;
        let revocations = Revocations::start(&live, core.shutdown.clone());
        known_keys.follow(&revocations, core.shutdown.clone());
        let authenticator = Authenticator::new(core.pool.clone(), hasher, known_keys);
        (Some(authenticator), Some(revocations))
    };
    let read_models = ReadModels::new(core.pool.clone(), core.waker.clone(), projectors);
    let reads = match &core.replica {
        Some(replica) => {
            let wait = Duration::from_millis(config.replica.replica_wait_ms);
            let shutdown = core.shutdown.clone();
            (ReadRouter::primary(read_models))
                .with_replica(replica.clone(), wait, live, shutdown)
                .await
        }
        None => ReadRouter::primary(read_models),
    };
    Ok(AppState {
        schema,
        pool: core.pool.clone(),
        authenticator,
        revocations,
        reads,
        limits: HttpLimits {
            max_body_bytes: security.max_body_bytes,
            request_timeout: Duration::from_secs(security.request_timeout_secs.max(1)),
            max_socket_operations: security.ws_max_operations.max(1),
        },
    })
}

/// A built instance: call [`Application::run_until_stopped`] to serve.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    commands: Commands,
    shutdown: CancellationToken,
    workers: JoinSet<()>,
}

impl Application {
    /// Binds the listener, then starts the log waker, the roles connection, the projection
    /// runners and the workers.
    ///
    /// # Errors
    /// The address cannot be bound, the pepper is not this database's, or a client cannot
    /// be built.
    pub async fn build(
        config: &Config,
        pool: PgPool,
        options: PgConnectOptions,
        wiring: Wiring,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let instance = options.get_application_name().unwrap_or("chronicle");
        if crate::metrics::install(instance).is_none() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        let pepper = Pepper::load(&pool, config.security.key_pepper.as_ref())
            .await
            .context("loading the pepper")?;
        chronicle_projections::checkpoint::create(&pool, &wiring.projectors)
            .await
            .context("creating the projection checkpoints")?;
        let (core, mut workers) = Core::new(config, pool, &options, &pepper, wiring.upcasters)?;
        let read_models = wiring.projectors.clone();
        let rebuilder = Rebuilder::new(
            core.pool.clone(),
            options.clone(),
            &core.reader,
            wiring.projectors.clone(),
        );
        let changed = rebuilder
            .request_changed()
            .await
            .context("asking for the rebuilds of changed projections")?;
        if !changed.is_empty() {
            tracing::info!(
                projections = changed.join(", "),
                "projector versions changed: rebuilding beside the live tables"
            );
        }
        workers::spawn_projectors(&core, config, wiring.projectors, &mut workers);
        workers::spawn_rebuilder(&core, config, rebuilder, &mut workers);
        let providers = workers::providers(config)?;
        workers::spawn_workers(&core, config, &providers, &mut workers)?;
        let state = api_state(config, &core, &pepper, &read_models, providers).await?;
        Ok(Self {
            listener,
            state,
            commands: core.commands,
            shutdown: core.shutdown,
            workers,
        })
    }

    /// The bound address (useful with port 0).
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The command path of this instance.
    pub fn commands(&self) -> Commands {
        self.commands.clone()
    }

    /// Cancel this token to stop the instance.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled, then stops the workers.
    ///
    /// # Errors
    /// The server failed.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        let server = axum::serve(self.listener, router(self.state.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let mut server = tokio::spawn(async move { server.await });
        tokio::select! {
            served = &mut server => served.context("server task")?.context("serving HTTP")?,
            () = shutdown.cancelled() => {
                // Open websockets would hold a graceful shutdown forever: give them a grace.
                if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
                    server.abort();
                }
            }
        }
        shutdown.cancel();
        while self.workers.join_next().await.is_some() {}
        self.state.pool.close().await;
        Ok(())
    }
}
