//! The provider driver: takes closed batches through the provider's batch API — upload,
//! create, poll, download — and records every step as an event.
//!
//! Live instances share the batches by partitions of the batch id space, each batch driven
//! by one instance at a time (`Roles::partitioned`). Each step starts from the
//! batch aggregate's own state, so a step repeated after a crash resumes where the events say
//! it stands. The one step that must not be repeated, creating the provider batch, first asks
//! the provider for a batch tagged with our batch id (`Provider::find_batch`).

use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::batch::{Batch, BatchCommand, BatchStatus};
use chronicle_aggregates::request::{RequestEvent, RequestStatus};
use chronicle_aggregates::Endpoint;
use chronicle_projections::request_moves;
use chrono::Utc;
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

mod files;

use crate::command::{CommandContext, CommandError, Commands};
use crate::llm::Prices;
use crate::projection::{Lease, Role};
use crate::provider::{BatchInput, Provider, ProviderBatch, ProviderError, ProviderStatus};

/// Why a driver step stopped; the step is tried again on the next round.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The provider failed after its retries.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// A command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The providers batches go to, by endpoint: `/v1/messages` to Anthropic, the others to the
/// OpenAI-compatible one. A batch whose provider is not configured waits.
#[derive(Clone, Default)]
pub struct Providers {
    /// The OpenAI-compatible Batch API.
    pub openai: Option<Arc<dyn Provider>>,
    /// Anthropic Message Batches.
    pub anthropic: Option<Arc<dyn Provider>>,
}

impl Providers {
    /// The provider for batches of `endpoint`.
    pub fn for_endpoint(&self, endpoint: Endpoint) -> Option<&Arc<dyn Provider>> {
        match endpoint {
            Endpoint::Messages => self.anthropic.as_ref(),
            Endpoint::ChatCompletions
            | Endpoint::Embeddings
            | Endpoint::Responses
            | Endpoint::Completions => self.openai.as_ref(),
        }
    }

    /// The endpoint paths some configured provider serves.
    pub fn endpoints(&self) -> Vec<&'static str> {
        Endpoint::ALL
            .into_iter()
            .filter(|endpoint| self.for_endpoint(*endpoint).is_some())
            .map(Endpoint::path)
            .collect()
    }

    /// True when at least one provider is configured.
    pub fn any(&self) -> bool {
        self.openai.is_some() || self.anthropic.is_some()
    }
}

/// How often and how much at once the driver talks to its provider.
#[derive(Debug, Clone)]
pub struct DriverSettings {
    /// Pause between rounds over the batches at the provider.
    pub poll_every: Duration,
    /// Uploads and batch creations in flight at once.
    pub uploads: usize,
    /// Polls and downloads in flight at once.
    pub polls: usize,
    /// What results cost.
    pub prices: Prices,
}

/// The provider driver.
pub struct ProviderDriver {
    commands: Commands,
    pool: PgPool,
    providers: Providers,
    prices: Prices,
    poll_every: Duration,
    uploads: Semaphore,
    polls: Semaphore,
    upload_slots: usize,
    poll_slots: usize,
}

/// The driver's two kinds of work, each in a loop of its own, so a backlog of uploads (after
/// a provider outage, say) never holds up polling the batches already at the provider.
#[derive(Debug, Clone, Copy)]
enum Lane {
    /// Closed batches on their way to the provider: upload, then create.
    ToProvider,
    /// Batches at or back from the provider: poll, download, cancel there.
    AtProvider,
}

impl Lane {
    /// The `batches` rows this lane takes.
    const fn condition(self) -> &'static str {
        match self {
            Self::ToProvider => "status IN ('uploading', 'uploaded')",
            Self::AtProvider => {
                "(status IN ('provider_processing', 'provider_completed', 'expired', 'downloading')
                  OR (status = 'cancelled' AND provider_batch_id IS NOT NULL
                      AND NOT provider_cancel_requested))"
            }
        }
    }

    /// Whether a batch in `status` is this lane's to advance; it leaves the lane when not.
    const fn holds(self, status: Option<BatchStatus>) -> bool {
        match self {
            Self::ToProvider => {
                matches!(status, Some(BatchStatus::Uploading | BatchStatus::Uploaded))
            }
            Self::AtProvider => matches!(
                status,
                Some(
                    BatchStatus::ProviderProcessing
                        | BatchStatus::ProviderCompleted
                        | BatchStatus::Expired
                        | BatchStatus::Downloading
                        | BatchStatus::Cancelled
                )
            ),
        }
    }
}

impl ProviderDriver {
    /// A driver with `settings`.
    pub fn new(
        commands: Commands,
        pool: PgPool,
        providers: Providers,
        settings: DriverSettings,
    ) -> Self {
        let (uploads, polls) = (settings.uploads.max(1), settings.polls.max(1));
        Self {
            commands,
            pool,
            providers,
            prices: settings.prices,
            poll_every: settings.poll_every,
            uploads: Semaphore::new(uploads),
            polls: Semaphore::new(polls),
            upload_slots: uploads,
            poll_slots: polls,
        }
    }

    /// The role that lets an instance drive batches.
    pub const ROLE: &'static str = "provider_driver";

    /// Runs until `shutdown`, driving the batches in the partitions of `role` this instance
    /// holds.
    pub async fn run(self, role: Role, shutdown: CancellationToken) {
        let pause = self.poll_every;
        role.lead_while_held(pause, &shutdown, |role| self.lead(role, &shutdown))
            .await;
    }

    /// Drives both lanes until `shutdown` or until the role is lost; each lane finishes its
    /// pass first.
    async fn lead(&self, role: Role, shutdown: &CancellationToken) {
        let stop = shutdown.child_token();
        let mut lost = role.clone();
        let watch = async {
            tokio::select! {
                () = lost.lost() => {}
                () = stop.cancelled() => {}
            }
            stop.cancel();
        };
        tokio::join!(
            watch,
            self.lane(Lane::ToProvider, &role, &stop),
            self.lane(Lane::AtProvider, &role, &stop)
        );
    }

    /// Passes over `lane`'s batches, one per poll period, until `stop`.
    async fn lane(&self, lane: Lane, role: &Role, stop: &CancellationToken) {
        let mut changes = role.clone();
        while !stop.is_cancelled() {
            if let Err(error) = self.round(lane, role).await {
                tracing::warn!(%error, ?lane, "provider driver round failed");
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_every) => {}
                () = changes.changed() => {}
                () = stop.cancelled() => {}
            }
        }
    }

    /// One pass over the lane's batches, longest waiting first.
    ///
    /// # Errors
    /// The batch list could not be read; a failing batch is logged and skipped.
    async fn round(&self, lane: Lane, role: &Role) -> Result<(), DriverError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(&format!(
            "SELECT id FROM batches
              WHERE endpoint = ANY($1) AND chronicle_partition(id) = ANY($2) AND {}
              ORDER BY updated_at LIMIT 1000",
            lane.condition()
        ))
        .bind(self.providers.endpoints())
        .bind(role.partitions())
        .fetch_all(&self.pool)
        .await?;
        let slots = match lane {
            Lane::ToProvider => self.upload_slots,
            Lane::AtProvider => self.poll_slots,
        };
        futures::stream::iter(ids)
            .for_each_concurrent(slots, |batch_id| async move {
                // Handed on since the read: its new holder drives it.
                let Some(lease) = role.lease(batch_id) else {
                    return;
                };
                if let Err(error) = self.drive(lane, batch_id, &lease).await {
                    tracing::warn!(batch.id = %batch_id, %error, "provider step failed; will retry");
                }
            })
            .await;
        Ok(())
    }

    async fn command(&self, batch_id: Uuid, command: BatchCommand) -> Result<(), DriverError> {
        self.commands
            .execute::<Batch>(
                &CommandContext::system(batch_id),
                &batch_id.to_string(),
                command,
                &(),
                None,
            )
            .await?;
        Ok(())
    }

    /// Advances one batch; a batch the provider refuses fails with the provider's message.
    async fn drive(&self, lane: Lane, batch_id: Uuid, lease: &Lease) -> Result<(), DriverError> {
        match self.advance(lane, batch_id, lease).await {
            // The provider refused (a 4xx other than 408/429): retrying will not help.
            Err(DriverError::Provider(ProviderError::Rejected { status, message })) => {
                tracing::warn!(batch.id = %batch_id, status, %message, "the provider refused the batch");
                self.fail(batch_id, json!({ "status": status, "message": message }))
                    .await
            }
            other => other,
        }
    }

    /// Takes one batch as far as it can go now within `lane` (the other lane takes it on),
    /// starting no step once its partition is being handed on.
    async fn advance(&self, lane: Lane, batch_id: Uuid, lease: &Lease) -> Result<(), DriverError> {
        loop {
            if lease.is_closing() {
                return Ok(());
            }
            let batch = self.commands.load::<Batch>(&batch_id.to_string()).await?;
            let Some(provider) = batch
                .key()
                .and_then(|key| self.providers.for_endpoint(key.endpoint))
            else {
                return Ok(());
            };
            let provider = provider.as_ref();
            let before = batch.status();
            if !lane.holds(before) {
                return Ok(());
            }
            match before {
                Some(BatchStatus::Uploading) => {
                    let Some(_permit) = slot(&self.uploads, lease).await else {
                        return Ok(());
                    };
                    self.upload(provider, batch_id, &batch).await?;
                }
                Some(BatchStatus::Uploaded) => {
                    let Some(_permit) = slot(&self.uploads, lease).await else {
                        return Ok(());
                    };
                    self.create(provider, batch_id, &batch).await?;
                }
                Some(BatchStatus::ProviderProcessing) => {
                    let Some(_permit) = slot(&self.polls, lease).await else {
                        return Ok(());
                    };
                    self.poll(provider, batch_id, &batch).await?;
                }
                Some(BatchStatus::ProviderCompleted | BatchStatus::Expired) => {
                    self.command(batch_id, BatchCommand::StartDownload { at: Utc::now() })
                        .await?;
                }
                Some(BatchStatus::Downloading) => {
                    let Some(_permit) = slot(&self.polls, lease).await else {
                        return Ok(());
                    };
                    self.download(provider, batch_id, &batch).await?;
                }
                Some(BatchStatus::Cancelled) => {
                    return self.cancel_at_provider(provider, batch_id, &batch).await
                }
                _ => return Ok(()),
            }
            let after = self.commands.load::<Batch>(&batch_id.to_string()).await?;
            if after.status() == before {
                return Ok(());
            }
        }
    }

    /// Uploads the batch's input file, unless a crash left a provider batch behind already.
    async fn upload(
        &self,
        provider: &dyn Provider,
        batch_id: Uuid,
        _batch: &Batch,
    ) -> Result<(), DriverError> {
        if let Some(existing) = provider.find_batch(batch_id).await? {
            return self.adopt(batch_id, &existing).await;
        }
        let input = self.input_file(batch_id).await?;
        let input_file_id = provider.upload(input).await?;
        let command = BatchCommand::MarkUploaded {
            input_file_id,
            at: Utc::now(),
        };
        self.command(batch_id, command).await
    }

    /// Records a provider batch created before a crash, instead of creating a second one.
    async fn adopt(&self, batch_id: Uuid, existing: &ProviderBatch) -> Result<(), DriverError> {
        tracing::info!(batch.id = %batch_id, provider.batch_id = %existing.id, "adopting the provider batch created before a restart");
        let batch = self.commands.load::<Batch>(&batch_id.to_string()).await?;
        if batch.status() == Some(BatchStatus::Uploading) {
            let command = BatchCommand::MarkUploaded {
                input_file_id: existing.input_file_id.clone(),
                at: Utc::now(),
            };
            self.command(batch_id, command).await?;
        }
        let command = BatchCommand::MarkSubmitted {
            provider_batch_id: existing.id.clone(),
            at: Utc::now(),
        };
        self.command(batch_id, command).await
    }

    async fn create(
        &self,
        provider: &dyn Provider,
        batch_id: Uuid,
        batch: &Batch,
    ) -> Result<(), DriverError> {
        if let Some(existing) = provider.find_batch(batch_id).await? {
            return self.adopt(batch_id, &existing).await;
        }
        let (Some(key), Some(file)) = (batch.key(), &batch.provider().input_file_id) else {
            return Ok(());
        };
        let input = if provider.inline_input() {
            BatchInput::Inline(self.input_file(batch_id).await?)
        } else {
            BatchInput::File(file)
        };
        let created = provider.create_batch(input, key.endpoint, batch_id).await;
        let command = BatchCommand::MarkSubmitted {
            provider_batch_id: created?.id,
            at: Utc::now(),
        };
        self.command(batch_id, command).await
    }

    async fn poll(
        &self,
        provider: &dyn Provider,
        batch_id: Uuid,
        batch: &Batch,
    ) -> Result<(), DriverError> {
        if batch.provider().progress.is_none() {
            // First poll after submission: the requests are at the provider now.
            self.send_pending(batch_id).await?;
        }
        let Some(provider_batch_id) = &batch.provider().batch_id else {
            return Ok(());
        };
        let current = provider.batch(provider_batch_id).await?;
        let counts = current.request_counts;
        let status = serde_json::to_value(current.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let progress = (
            status.clone(),
            counts.total,
            counts.completed,
            counts.failed,
        );
        if batch.provider().progress.as_ref() != Some(&progress) {
            let command = BatchCommand::RecordProviderProgress {
                provider_status: status,
                total: counts.total,
                completed: counts.completed,
                failed: counts.failed,
                at: Utc::now(),
            };
            self.command(batch_id, command).await?;
        }
        let at = Utc::now();
        match current.status {
            ProviderStatus::Completed => {
                let command = BatchCommand::MarkProviderCompleted {
                    output_file_id: current.output_file_id,
                    error_file_id: current.error_file_id,
                    at,
                };
                self.command(batch_id, command).await
            }
            ProviderStatus::Failed => {
                self.fail(batch_id, current.errors.unwrap_or(Value::Null))
                    .await
            }
            ProviderStatus::Expired => {
                // An expired batch still downloads what finished in time.
                let command = BatchCommand::Expire {
                    output_file_id: current.output_file_id,
                    error_file_id: current.error_file_id,
                    at,
                };
                self.command(batch_id, command).await
            }
            ProviderStatus::Cancelling | ProviderStatus::Cancelled => {
                self.command(batch_id, BatchCommand::Cancel { at }).await
            }
            ProviderStatus::Validating
            | ProviderStatus::InProgress
            | ProviderStatus::Finalizing => Ok(()),
        }
    }

    /// Passes an owner's cancel on to the provider, once.
    async fn cancel_at_provider(
        &self,
        provider: &dyn Provider,
        batch_id: Uuid,
        batch: &Batch,
    ) -> Result<(), DriverError> {
        let facts = batch.provider();
        let Some(provider_batch_id) = facts.batch_id.as_ref().filter(|_| !facts.cancel_requested)
        else {
            return Ok(());
        };
        match provider.cancel(provider_batch_id).await {
            // Already finished or cancelled there: nothing left to stop.
            Ok(_) | Err(ProviderError::Rejected { .. }) => {}
            Err(other) => return Err(other.into()),
        }
        let at = Utc::now();
        // The batch's waiting requests were settled by the command that cancelled it.
        self.command(batch_id, BatchCommand::RecordProviderCancel { at })
            .await
    }

    /// Appends `event` to every request of the batch whose state lets it move (idempotent).
    async fn move_requests(&self, batch_id: Uuid, event: RequestEvent) -> Result<(), DriverError> {
        let ids: Vec<String> = self
            .request_ids(batch_id)
            .await?
            .iter()
            .map(Uuid::to_string)
            .collect();
        self.apply_moves(batch_id, &ids, request_moves::all(&event))
            .await?;
        Ok(())
    }

    /// Appends the events `decide` picks to the requests `ids` (see `request_moves`).
    async fn apply_moves(
        &self,
        batch_id: Uuid,
        ids: &[String],
        decide: impl Fn(&str, RequestStatus) -> Option<RequestEvent>,
    ) -> Result<Vec<String>, DriverError> {
        let context = CommandContext::system(batch_id);
        Ok(self
            .commands
            .move_requests(&context, None, ids, decide)
            .await?)
    }

    /// Marks the batch failed, and with it the requests still waiting.
    async fn fail(&self, batch_id: Uuid, error: Value) -> Result<(), DriverError> {
        self.command(
            batch_id,
            BatchCommand::Fail {
                error,
                at: Utc::now(),
            },
        )
        .await
    }

    /// Moves the batch's pending requests to provider_processing (idempotent).
    async fn send_pending(&self, batch_id: Uuid) -> Result<(), DriverError> {
        let event = RequestEvent::SentToProvider { at: Utc::now() };
        self.move_requests(batch_id, event).await
    }
}

/// A permit of `slots`, unless the partition of `lease` starts being handed on first (or the
/// semaphore closed).
async fn slot<'a>(slots: &'a Semaphore, lease: &Lease) -> Option<SemaphorePermit<'a>> {
    tokio::select! {
        permit = slots.acquire() => permit.ok(),
        () = lease.closing() => None,
    }
}
