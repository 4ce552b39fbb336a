//! What owners do to their batches and requests after submitting: flush, cancel, redeliver,
//! and (for poll delivery) acknowledge results. Each checks ownership, then runs its command.

use chronicle_aggregates::batch::{Batch, BatchCommand, CloseReason};
use chronicle_aggregates::request::{Request, RequestCommand, RequestEvent, RequestStatus};
use chronicle_aggregates::ErrorCode;

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::submit::next_batch_id;
use crate::command::{CommandContext, CommandError, CommandReceipt, Commands, IdempotencyKey};
use crate::delivery::batch_step;

/// Owner actions on batches and requests.
#[derive(Clone)]
pub struct LlmActions {
    commands: Commands,
    pool: PgPool,
}

fn not_found(what: &str) -> CommandError {
    CommandError::Rejected {
        code: ErrorCode::NotFound,
        message: format!("{what} not found"),
    }
}

impl LlmActions {
    /// Actions through `commands`.
    pub fn new(commands: Commands, pool: PgPool) -> Self {
        Self { commands, pool }
    }

    /// Checks that `owner` owns the batch or request `id` of `aggregate_type`.
    ///
    /// # Errors
    /// `NOT_FOUND` when it does not exist or is someone else's.
    pub async fn check_owner(
        &self,
        owner: Option<&str>,
        aggregate_type: &str,
        id: Uuid,
    ) -> Result<(), CommandError> {
        match aggregate_type {
            "Batch" => self.owned_batch(owner, id).await.map(drop),
            _ => self.owned_request(owner, id).await.map(drop),
        }
    }

    async fn owned_batch(
        &self,
        owner: Option<&str>,
        batch_id: Uuid,
    ) -> Result<Batch, CommandError> {
        let batch = self.commands.load::<Batch>(&batch_id.to_string()).await?;
        match batch.key() {
            Some(key) if owner.is_none_or(|owner| key.owner == owner) => Ok(batch),
            _ => Err(not_found("batch")),
        }
    }

    async fn owned_request(
        &self,
        owner: Option<&str>,
        request_id: Uuid,
    ) -> Result<Request, CommandError> {
        let id = request_id.to_string();
        let request = self.commands.load::<Request>(&id).await?;
        match request.submission() {
            Some(submission) if owner.is_none_or(|owner| submission.owner == owner) => Ok(request),
            _ => Err(not_found("request")),
        }
    }

    async fn on_batch(
        &self,
        context: &CommandContext,
        batch_id: Uuid,
        command: BatchCommand,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.owned_batch(Some(&context.actor), batch_id).await?;
        self.commands
            .execute::<Batch>(context, &batch_id.to_string(), command, &(), key)
            .await
    }

    async fn on_request(
        &self,
        context: &CommandContext,
        request_id: Uuid,
        command: RequestCommand,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        self.owned_request(Some(&context.actor), request_id).await?;
        self.commands
            .execute::<Request>(context, &request_id.to_string(), command, &(), key)
            .await
    }

    /// Closes a building batch now, so it goes to the provider without waiting.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION` (not building, or empty), `CONFLICT`.
    pub async fn flush_batch(
        &self,
        context: &CommandContext,
        batch_id: Uuid,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let command = BatchCommand::Close {
            reason: CloseReason::Flushed,
            successor: next_batch_id(batch_id),
            at: Utc::now(),
        };
        self.on_batch(context, batch_id, command, key).await
    }

    /// Cancels a batch that has not finished at the provider.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    pub async fn cancel_batch(
        &self,
        context: &CommandContext,
        batch_id: Uuid,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let command = BatchCommand::Cancel { at: Utc::now() };
        self.on_batch(context, batch_id, command, key).await
    }

    /// Cancels a pending request whose batch is still building.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION` (not pending, or its batch left building), `CONFLICT`.
    pub async fn cancel_request(
        &self,
        context: &CommandContext,
        request_id: Uuid,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let request = self.owned_request(Some(&context.actor), request_id).await?;
        let Some(submission) = request.submission() else {
            return Err(not_found("request"));
        };
        if let Some(status) = request.status().filter(|s| *s != RequestStatus::Pending) {
            return Err(CommandError::Rejected {
                code: ErrorCode::InvalidTransition,
                message: format!("a {} request cannot be cancelled", status.as_str()),
            });
        }
        // The batch decides: withdrawing serializes with its closing, so a withdrawn request
        // is never uploaded. The same command cancels the request, in the same transaction.
        let command = BatchCommand::WithdrawRequest {
            request_id,
            at: Utc::now(),
        };
        let batch_id = submission.batch_id.to_string();
        self.commands
            .execute::<Batch>(context, &batch_id, command, &(), key)
            .await
    }

    /// Delivers a pushed result again, in a new round with a new delivery id (after its
    /// last round ended: delivered, or delivery failed).
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION` (still delivering, no result, or poll delivery),
    /// `CONFLICT`.
    pub async fn redeliver(
        &self,
        context: &CommandContext,
        request_id: Uuid,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let command = RequestCommand::StartDelivery { at: Utc::now() };
        let receipt = self.on_request(context, request_id, command, key).await?;
        let request = self
            .commands
            .load::<Request>(&request_id.to_string())
            .await?;
        if let Some(submission) = request.submission() {
            self.reopen(context, submission.batch_id).await?;
        }
        Ok(receipt)
    }

    /// Takes a done batch back to delivering after some of its results were redelivered.
    async fn reopen(&self, context: &CommandContext, batch_id: Uuid) -> Result<(), CommandError> {
        let command = BatchCommand::StartDelivery { at: Utc::now() };
        batch_step(&self.commands, context, batch_id, command).await
    }

    /// Delivers again the batch's pushed results whose delivery failed (and, unless
    /// `only_failed`, those delivered too); returns how many started a new round. The batch
    /// goes back to delivering if it was done.
    ///
    /// # Errors
    /// `NOT_FOUND`, or a database failure.
    pub async fn redeliver_batch(
        &self,
        context: &CommandContext,
        batch_id: Uuid,
        only_failed: bool,
        key: Option<IdempotencyKey>,
    ) -> Result<u64, CommandError> {
        self.owned_batch(Some(&context.actor), batch_id).await?;
        let moved = self
            .commands
            .once(context, key, |command_id| async move {
                let from: &[RequestStatus] = if only_failed {
                    &[RequestStatus::DeliveryFailed]
                } else {
                    &[RequestStatus::DeliveryFailed, RequestStatus::Delivered]
                };
                let statuses: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT id::text FROM requests
                      WHERE batch_id = $1 AND status = ANY($2)
                        AND delivery ->> 'kind' <> 'poll'",
                )
                .bind(batch_id)
                .bind(statuses)
                .fetch_all(&self.pool)
                .await?;
                let started = RequestEvent::DeliveryStarted { at: Utc::now() };
                // The events decide: a request the read model shows late is moved only from
                // the statuses asked for.
                let moved = self
                    .commands
                    .move_requests(context, command_id, &ids, |_, status| {
                        from.contains(&status).then(|| started.clone())
                    })
                    .await?;
                Ok(moved.len() as u64)
            })
            .await?;
        if moved > 0 {
            self.reopen(context, batch_id).await?;
        }
        Ok(moved)
    }

    /// Poll delivery: acknowledges a fetched result.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION` (no result yet, or not poll delivery), `CONFLICT`.
    pub async fn acknowledge_result(
        &self,
        context: &CommandContext,
        request_id: Uuid,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let command = RequestCommand::Acknowledge { at: Utc::now() };
        self.on_request(context, request_id, command, key).await
    }

    /// Poll delivery: reports that a fetched result could not be used.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_TRANSITION` (no result yet, or not poll delivery), `CONFLICT`.
    pub async fn report_result_failure(
        &self,
        context: &CommandContext,
        request_id: Uuid,
        reason: String,
        key: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError> {
        let command = RequestCommand::ReportConsumeFailure {
            reason,
            at: Utc::now(),
        };
        self.on_request(context, request_id, command, key).await
    }
}
