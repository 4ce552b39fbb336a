//! The instance's background work: a runner per projector set and the workers, each on the
//! instance that holds its role or, for partitioned workers, shared by partitions.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chronicle_projections::Projector;
use secrecy::SecretString;
use tokio::task::JoinSet;

use super::Core;
use crate::audit::Checkpointer;
use crate::config::Config;
use crate::delivery::{
    DeliverySettings, DeliveryWorker, RabbitPublisher, RetryPolicy, Transports, WebhookSecrets,
    WebhookSender,
};
use crate::llm::{BatchCloser, DriverSettings, Prices, ProviderDriver, Providers};
use crate::log::SharedPages;
use crate::projection::{ProjectionRunner, Rebuilder, RunnerSettings, REBUILD_ROLE};
use crate::provider::{
    Anthropic, AnthropicConfig, ChatClient, ChatConfig, OpenAi, OpenAiConfig, Provider,
};
use crate::simulation::Responder;
use crate::transfer::TransferRunner;

/// Events a projector applies per transaction.
const PROJECTION_PAGE: u32 = 500;
/// Timeout of one provider HTTP attempt, and retries after it.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(120);
const PROVIDER_RETRIES: usize = 8;

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
pub(super) fn providers(config: &Config) -> anyhow::Result<Providers> {
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
fn delivery_worker(core: &Core, config: &Config) -> anyhow::Result<DeliveryWorker> {
    let settings = &config.delivery;
    let timeout = Duration::from_millis(settings.delivery_timeout_ms);
    let transports = Transports {
        webhooks: WebhookSender::new(timeout, core.egress.clone())
            .context("building the webhook client")?,
        rabbitmq: RabbitPublisher::new(settings.rabbitmq_url.clone(), timeout),
        secrets: Arc::new(WebhookSecrets::new(core.pool.clone())),
    };
    Ok(DeliveryWorker::new(
        core.commands.clone(),
        core.pool.clone(),
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

/// A runner per set of projectors (see [`crate::projection::sets`]), all reading the log's
/// pages through one shared reader.
pub(super) fn spawn_projectors(
    core: &Core,
    config: &Config,
    projectors: Vec<Arc<dyn Projector>>,
    workers: &mut JoinSet<()>,
) {
    let settings = RunnerSettings {
        page_size: PROJECTION_PAGE,
        standby_retry: config.standby_retry(),
    };
    let shared = SharedPages::new(core.reader.clone(), core.waker.clone());
    for set in crate::projection::sets(projectors) {
        let runner = ProjectionRunner::new(set, core.pool.clone(), core.reader.clone(), settings)
            .sharing(shared.clone());
        let role = core.roles.role(&runner.role_name());
        workers.spawn(runner.run(role, core.waker.clone(), core.shutdown.clone()));
    }
}

/// The rebuilds' runner, on the instance that holds the rebuild role.
pub(super) fn spawn_rebuilder(
    core: &Core,
    config: &Config,
    rebuilder: Rebuilder,
    workers: &mut JoinSet<()>,
) {
    let role = core.roles.role(REBUILD_ROLE);
    let pause = config.standby_retry();
    workers.spawn(rebuilder.run(role, core.waker.clone(), pause, core.shutdown.clone()));
}

/// The workers: the audit checkpointer on the instance holding its role; the batch closer,
/// the provider driver, delivery, the simulation responder and the transfer runner in the
/// partitions of their roles this instance holds.
pub(super) fn spawn_workers(
    core: &Core,
    config: &Config,
    providers: &Providers,
    workers: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let shutdown = &core.shutdown;
    let closer = BatchCloser::new(
        core.commands.clone(),
        core.pool.clone(),
        Duration::from_millis(config.batch_max_wait_ms),
        Duration::from_millis(config.batch_check_ms),
    );
    let role = core.roles.partitioned(BatchCloser::ROLE);
    workers.spawn(closer.run(role, core.waker.clone(), shutdown.clone()));
    if let Some(driver) = provider_driver(core, config, providers.clone())? {
        let role = core.roles.partitioned(ProviderDriver::ROLE);
        workers.spawn(driver.run(role, shutdown.clone()));
    }
    if config.audit_checkpoint_secs > 0 {
        let every = Duration::from_secs(config.audit_checkpoint_secs);
        let checkpoints = Checkpointer::new(core.pool.clone(), every, config.audit_key());
        let role = core.roles.role(Checkpointer::ROLE);
        workers.spawn(checkpoints.run(role, shutdown.clone()));
    }
    let delivery = delivery_worker(core, config)?;
    let role = core.roles.partitioned(DeliveryWorker::ROLE);
    workers.spawn(delivery.run(role, core.waker.clone(), shutdown.clone()));
    if let Some(chat) = chat_client(config)? {
        let poll = Duration::from_millis(config.simulation.simulation_poll_ms.max(10));
        let responder = Responder::new(core.commands.clone(), core.pool.clone(), chat, poll);
        let role = core.roles.partitioned(Responder::ROLE);
        workers.spawn(responder.run(role, core.waker.clone(), shutdown.clone()));
    } else {
        tracing::warn!("no chat completions URL (CHRONICLE_CHAT_URL or CHRONICLE_PROVIDER_URL): simulation AI calls wait");
    }
    let runner = transfer_runner(core, config)?;
    let role = core.roles.partitioned(TransferRunner::ROLE);
    workers.spawn(runner.run(role, core.waker.clone(), shutdown.clone()));
    Ok(())
}

/// The provider driver, when a provider is configured.
fn provider_driver(
    core: &Core,
    config: &Config,
    providers: Providers,
) -> anyhow::Result<Option<ProviderDriver>> {
    // Read whether or not a provider is configured: a wrong table stops the start.
    let prices = Prices::load(config.prices_file.as_deref())?;
    if !providers.any() {
        return Ok(None);
    }
    Ok(Some(ProviderDriver::new(
        core.commands.clone(),
        core.pool.clone(),
        providers,
        DriverSettings {
            poll_every: Duration::from_millis(config.provider_poll_ms),
            uploads: config.provider_uploads,
            polls: config.provider_polls,
            prices,
        },
    )))
}

/// The transfer and query job runner.
fn transfer_runner(core: &Core, config: &Config) -> anyhow::Result<TransferRunner> {
    let transfer = &config.transfer;
    TransferRunner::new(
        core.commands.clone(),
        core.pool.clone(),
        core.vault.clone(),
        crate::transfer::RunnerSettings {
            concurrency: transfer.transfer_concurrency.max(1),
            poll_every: Duration::from_millis(transfer.transfer_poll_ms.max(10)),
            task_timeout: Duration::from_secs(transfer.transfer_task_timeout_secs.max(1)),
            http_timeout: Duration::from_secs(transfer.transfer_http_timeout_secs.max(1)),
            retry_wait: Duration::from_millis(transfer.transfer_retry_wait_ms),
        },
        &core.egress,
    )
    .context("building the DICOMweb client")
}
