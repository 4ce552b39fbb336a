//! Wiring: the event store, the log, projections, the API and the HTTP server of one instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chronicle_aggregates::batch::{Batch, BatchLimits, BatchServices};
use chronicle_aggregates::client::Client;
use chronicle_aggregates::dicom_server::DicomServer;
use chronicle_aggregates::query::QueryJob;
use chronicle_aggregates::request::Request;
use chronicle_aggregates::simulation::Simulation;
use chronicle_aggregates::subject::Subject;
use chronicle_aggregates::transfer::TransferJob;
use chronicle_aggregates::Upcasters;
use chronicle_projections::Projector;
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{build_schema, ApiServices};
use crate::command::Commands;
use crate::config::Config;
use crate::delivery::{
    DeliverySettings, DeliveryWorker, RabbitPublisher, RetryPolicy, Transports, WebhookSecrets,
    WebhookSender,
};
use crate::http::{router, AppState, HttpLimits};
use crate::llm::{
    BatchCloser, DriverSettings, LlmActions, PgCustomIds, ProviderDriver, Providers, Submitter,
};
use crate::log::{LogReader, LogWaker, SharedPages};
use crate::privacy::Vault;
use crate::projection::{self, ProjectionRunner, RunnerSettings};
use crate::provider::{
    Anthropic, AnthropicConfig, ChatClient, ChatConfig, OpenAi, OpenAiConfig, Provider,
};
use crate::security::{
    bootstrap_admin, Authenticator, EgressPolicy, KeyHasher, Pepper, RateLimiter, RateLimits,
    Revocations,
};
use crate::simulation::{Responder, SimulationActions};
use crate::store::EventStores;
use crate::transfer::{TransferActions, TransferRunner};

const PROJECTION_PAGE: u32 = 500;
/// Timeout of one provider HTTP attempt, and retries after it.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(120);
const PROVIDER_RETRIES: usize = 8;
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

/// The API key in the variable `name`; a missing one is logged (by name, never the value).
fn api_key(name: &str) -> SecretString {
    std::env::var(name)
        .unwrap_or_else(|_| {
            tracing::warn!(variable = %name, "provider API key variable is not set; calls go without a key");
            String::new()
        })
        .into()
}

/// The configured providers.
fn providers(config: &Config) -> anyhow::Result<Providers> {
    let openai = config
        .provider_url
        .as_ref()
        .map(|base_url| {
            OpenAi::new(OpenAiConfig {
                base_url: base_url.clone(),
                api_key: api_key(&config.provider_api_key_env),
                organization: config.provider_organization.clone(),
                project: config.provider_project.clone(),
                timeout: PROVIDER_TIMEOUT,
                max_retries: PROVIDER_RETRIES,
                azure_api_version: config.provider_azure_api_version.clone(),
            })
        })
        .transpose()
        .context("building the OpenAI client")?;
    let anthropic = config
        .anthropic_url
        .as_ref()
        .map(|base_url| {
            Anthropic::new(AnthropicConfig {
                base_url: base_url.clone(),
                api_key: api_key(&config.anthropic_api_key_env),
                timeout: PROVIDER_TIMEOUT,
                max_retries: PROVIDER_RETRIES,
            })
        })
        .transpose()
        .context("building the Anthropic client")?;
    Ok(Providers {
        openai: openai.map(|p| Arc::new(p) as Arc<dyn Provider>),
        anthropic: anthropic.map(|p| Arc::new(p) as Arc<dyn Provider>),
    })
}

/// The Chat Completions client simulations use: its own URL, else the batch provider's.
fn chat_client(config: &Config) -> anyhow::Result<Option<ChatClient>> {
    let settings = &config.simulation;
    let (base_url, key_env) = match (&settings.chat_url, &config.provider_url) {
        (Some(url), _) => (url.clone(), &settings.chat_api_key_env),
        (None, Some(url)) => (url.clone(), &config.provider_api_key_env),
        (None, None) => return Ok(None),
    };
    let client = ChatClient::new(ChatConfig {
        base_url,
        api_key: api_key(key_env),
        timeout: Duration::from_millis(settings.chat_timeout_ms),
        retries: settings.chat_retries,
    })
    .context("building the chat completions client")?;
    Ok(Some(client))
}

/// The delivery worker as configured.
fn delivery_worker(
    config: &Config,
    commands: Commands,
    pool: PgPool,
    options: PgConnectOptions,
    services: BatchServices,
    secrets: Arc<WebhookSecrets>,
    egress: EgressPolicy,
) -> anyhow::Result<DeliveryWorker> {
    let settings = &config.delivery;
    let timeout = Duration::from_millis(settings.delivery_timeout_ms);
    let transports = Transports {
        webhooks: WebhookSender::new(timeout, egress).context("building the webhook client")?,
        rabbitmq: RabbitPublisher::new(settings.rabbitmq_url.clone(), timeout),
        secrets,
    };
    Ok(DeliveryWorker::new(
        commands,
        pool,
        options,
        services,
        transports,
        DeliverySettings {
            concurrency: settings.delivery_concurrency,
            per_target: settings.delivery_per_target,
            poll_every: Duration::from_millis(settings.delivery_poll_ms),
            policy: RetryPolicy {
                max_attempts: settings.delivery_max_attempts.max(1),
                deadline: Duration::from_secs(settings.delivery_deadline_secs),
                min_delay: Duration::from_millis(settings.delivery_backoff_min_ms),
                max_delay: Duration::from_millis(settings.delivery_backoff_max_ms),
            },
        },
    ))
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
    /// Binds the listener and starts the log waker and the projection runners.
    ///
    /// # Errors
    /// The address cannot be bound.
    pub async fn build(
        config: &Config,
        pool: PgPool,
        options: PgConnectOptions,
        wiring: Wiring,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let shutdown = CancellationToken::new();
        if crate::metrics::install().is_none() {
            tracing::warn!("another metrics recorder is installed: /metrics stays empty");
        }
        let pepper = Pepper::load(&pool, config.security.key_pepper.as_ref())
            .await
            .context("loading the pepper")?;
        let vault = Vault::new(pool.clone(), pepper.as_bytes());
        let stores = EventStores::new(
            pool.clone(),
            &config.snapshots,
            wiring.upcasters,
            vault.clone(),
        );
        let reader = LogReader::new(pool.clone(), stores.upcasters(), vault.clone());
        let waker = LogWaker::start(&pool, config.log_poll(), shutdown.clone());
        let settings = RunnerSettings {
            page_size: PROJECTION_PAGE,
            standby_retry: config.standby_retry(),
        };
        let mut workers = JoinSet::new();
        let shared = SharedPages::new(reader.clone(), waker.clone());
        for projector in wiring.projectors {
            let runner = ProjectionRunner::new(
                projector,
                pool.clone(),
                options.clone(),
                reader.clone(),
                settings,
            )
            .sharing(shared.clone());
            workers.spawn(runner.run(waker.clone(), shutdown.clone()));
        }
        let locks = PgPoolOptions::new()
            .max_connections(IDEMPOTENCY_LOCKS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_lazy_with(options.clone());
        let commands = Commands::new(stores, locks);
        let batch_services = BatchServices {
            custom_ids: Arc::new(PgCustomIds::new(pool.clone())),
        };
        let limits = BatchLimits {
            max_requests: config.batch_max_requests,
            max_bytes: config.batch_max_bytes,
        };
        let closer = BatchCloser::new(
            commands.clone(),
            pool.clone(),
            batch_services.clone(),
            Duration::from_millis(config.batch_max_wait_ms),
            Duration::from_millis(config.batch_check_ms),
        );
        workers.spawn(closer.run(shutdown.clone()));
        let providers = providers(config)?;
        if providers.any() {
            let driver = ProviderDriver::new(
                commands.clone(),
                pool.clone(),
                options.clone(),
                providers,
                batch_services.clone(),
                DriverSettings {
                    poll_every: Duration::from_millis(config.provider_poll_ms),
                    uploads: config.provider_uploads,
                    polls: config.provider_polls,
                },
            );
            workers.spawn(driver.run(shutdown.clone()));
        }
        if config.audit_checkpoint_secs > 0 {
            let every = Duration::from_secs(config.audit_checkpoint_secs);
            let checkpoints = crate::audit::Checkpointer::new(
                pool.clone(),
                options.clone(),
                every,
                config.audit_key(),
            );
            workers.spawn(checkpoints.run(shutdown.clone()));
        }
        let security = &config.security;
        let egress = EgressPolicy::new(security.egress_allow.clone());
        let hasher = KeyHasher::new(pepper.as_bytes());
        let secrets = Arc::new(WebhookSecrets::new(pool.clone()));
        let delivery = delivery_worker(
            config,
            commands.clone(),
            pool.clone(),
            options.clone(),
            batch_services.clone(),
            secrets.clone(),
            egress.clone(),
        )?;
        workers.spawn(delivery.run(shutdown.clone()));
        if let Some(chat) = chat_client(config)? {
            let responder = Responder::new(
                commands.clone(),
                pool.clone(),
                options.clone(),
                chat,
                Duration::from_millis(config.simulation.simulation_poll_ms.max(10)),
            );
            workers.spawn(responder.run(shutdown.clone()));
        } else {
            tracing::warn!("no chat completions URL (CHRONICLE_CHAT_URL or CHRONICLE_PROVIDER_URL): simulation AI calls wait");
        }
        let transfer = &config.transfer;
        let runner = TransferRunner::new(
            commands.clone(),
            pool.clone(),
            options.clone(),
            vault.clone(),
            crate::transfer::RunnerSettings {
                concurrency: transfer.transfer_concurrency.max(1),
                poll_every: Duration::from_millis(transfer.transfer_poll_ms.max(10)),
                task_timeout: Duration::from_secs(transfer.transfer_task_timeout_secs.max(1)),
                http_timeout: Duration::from_secs(transfer.transfer_http_timeout_secs.max(1)),
                retry_wait: Duration::from_millis(transfer.transfer_retry_wait_ms),
            },
            &egress,
        )
        .context("building the DICOMweb client")?;
        workers.spawn(runner.run(shutdown.clone()));
        let schema = build_schema(ApiServices {
            pool: pool.clone(),
            reader: reader.clone(),
            waker: waker.clone(),
            submitter: Submitter::new(
                commands.clone(),
                pool.clone(),
                batch_services.clone(),
                limits,
            ),
            actions: LlmActions::new(commands.clone(), batch_services, pool.clone()),
            secrets,
            simulations: SimulationActions::new(commands.clone()),
            transfers: TransferActions::new(
                commands.clone(),
                config.transfer.transfer_trusted.clone(),
                egress.clone(),
            ),
            egress,
            rate_limiter: RateLimiter::new(RateLimits {
                per_second: security.rate_limit_per_sec,
                burst: security.rate_limit_burst,
                items_per_second: security.rate_limit_items_per_sec,
            }),
            hasher: hasher.clone(),
            vault,
            commands: commands.clone(),
        });
        let authenticator = if security.insecure_dev {
            tracing::warn!("*** --insecure-dev: NO AUTHENTICATION. Every caller is an admin. Never expose this instance. ***");
            None
        } else {
            bootstrap_admin(
                &commands,
                &pool,
                &hasher,
                security.bootstrap_admin_key.as_ref(),
            )
            .await?;
            Some(Authenticator::new(pool.clone(), hasher))
        };
        let revocations = match authenticator {
            Some(_) => Some(
                Revocations::start(reader, &waker, shutdown.clone())
                    .await
                    .context("reading the log's head")?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            state: AppState {
                schema,
                pool,
                authenticator,
                revocations,
                limits: HttpLimits {
                    max_body_bytes: security.max_body_bytes,
                    request_timeout: Duration::from_secs(security.request_timeout_secs.max(1)),
                    max_socket_operations: security.ws_max_operations.max(1),
                },
            },
            commands,
            shutdown,
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
