//! The AI responder: makes every AI call a simulation waits for — the patient's opening line
//! and replies, and the feedback — and records each as completed or failed; it also ends
//! sessions whose time limit passed.
//!
//! One instance responds at a time (leadership). Work comes from the `simulations` read
//! model (a pending call); the call itself is built from the aggregate's own state, and
//! recording checks that the call is still the pending one, so a call made twice (after a
//! crash, or a lagging read model) is persisted once.

use std::time::Duration;

use chronicle_aggregates::simulation::{
    AiCallFailure, AiCallRecord, AiOutput, EndReason, PendingCall, Simulation, SimulationCommand,
    TokenUsage,
};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::prompt;
use crate::command::{CommandContext, CommandError, Commands};
use crate::projection::Leadership;
use crate::provider::ChatClient;

/// Calls in flight at once.
const PARALLEL: usize = 16;

/// The responder.
pub struct Responder {
    commands: Commands,
    pool: PgPool,
    options: PgConnectOptions,
    chat: ChatClient,
    poll_every: Duration,
}

impl Responder {
    /// A responder calling `chat`.
    pub fn new(
        commands: Commands,
        pool: PgPool,
        options: PgConnectOptions,
        chat: ChatClient,
        poll_every: Duration,
    ) -> Self {
        Self {
            commands,
            pool,
            options,
            chat,
            poll_every,
        }
    }

    /// Runs until `shutdown`, responding while this instance holds the role.
    pub async fn run(self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match Leadership::try_claim(&self.options, "simulation_responder").await {
                Ok(Some(mut leadership)) => {
                    while !shutdown.is_cancelled() && leadership.confirm().await.is_ok() {
                        if let Err(error) = self.round().await {
                            tracing::warn!(%error, "simulation responder round failed");
                        }
                        tokio::select! {
                            () = tokio::time::sleep(self.poll_every) => {}
                            () = shutdown.cancelled() => {}
                        }
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot claim the simulation responder role"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll_every) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    /// Ends timed-out sessions, then answers every pending call.
    ///
    /// # Errors
    /// The read model could not be read.
    pub async fn round(&self) -> Result<(), sqlx::Error> {
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM simulations
              WHERE status IN ('created', 'in_progress') AND ends_at <= now() LIMIT 100",
        )
        .fetch_all(&self.pool)
        .await?;
        for id in expired {
            let command = SimulationCommand::End {
                reason: EndReason::TimeLimit,
                at: Utc::now(),
            };
            self.record(id, command).await;
        }
        let pending: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM simulations
              WHERE pending_call_id IS NOT NULL AND status IN ('created', 'in_progress', 'ended')
              ORDER BY updated_at LIMIT 200",
        )
        .fetch_all(&self.pool)
        .await?;
        futures::stream::iter(pending)
            .for_each_concurrent(PARALLEL, |id| self.respond(id))
            .await;
        Ok(())
    }

    /// Makes the simulation's pending call and records how it went.
    async fn respond(&self, id: Uuid) {
        let simulation = match self.commands.load::<Simulation>(&id.to_string()).await {
            Ok(simulation) => simulation,
            Err(error) => {
                tracing::warn!(simulation.id = %id, %error, "cannot load the simulation");
                return;
            }
        };
        let (Some(pending), Some(spec)) = (simulation.pending(), simulation.spec()) else {
            return;
        };
        let request = prompt::request(&simulation, spec, pending.service);
        let command = match self.chat.complete(&request).await {
            Ok(answer) => match prompt::parse(pending.service, &answer.content) {
                Ok((output_json, output)) => result(
                    pending,
                    &spec.ai.model,
                    request,
                    answer,
                    output_json,
                    output,
                ),
                Err(reason) => {
                    failure(pending, request, reason, answer.attempts, answer.latency_ms)
                }
            },
            Err(failed) => failure(
                pending,
                request,
                failed.error.to_string(),
                failed.attempts,
                failed.latency_ms,
            ),
        };
        self.record(id, command).await;
    }

    /// Runs a command; a refusal means the session moved on (ended, archived) meanwhile.
    async fn record(&self, id: Uuid, command: SimulationCommand) {
        let context = CommandContext::system(id);
        let recorded = self
            .commands
            .execute::<Simulation>(&context, &id.to_string(), command, &(), None)
            .await;
        match recorded {
            Ok(_) => {}
            Err(CommandError::Rejected {
                code: ErrorCode::Conflict | ErrorCode::InvalidTransition,
                message,
            }) => tracing::info!(simulation.id = %id, %message, "AI result no longer wanted"),
            Err(error) => tracing::warn!(simulation.id = %id, %error, "cannot record the AI call"),
        }
    }
}

fn result(
    pending: PendingCall,
    model: &str,
    request: Value,
    answer: crate::provider::ChatAnswer,
    output_json: Value,
    output: AiOutput,
) -> SimulationCommand {
    SimulationCommand::RecordAiResult {
        call: AiCallRecord {
            call_id: pending.call_id,
            service: pending.service,
            model: model.to_owned(),
            request,
            response_text: answer.content,
            output: output_json,
            schema: pending.service.schema().to_owned(),
            usage: TokenUsage {
                prompt: answer.prompt_tokens,
                completion: answer.completion_tokens,
            },
            finish_reason: answer.finish_reason,
            latency_ms: answer.latency_ms,
            attempts: answer.attempts,
        },
        output,
        at: Utc::now(),
    }
}

fn failure(
    pending: PendingCall,
    request: Value,
    error: String,
    attempts: u32,
    latency_ms: u64,
) -> SimulationCommand {
    SimulationCommand::RecordAiFailure {
        failure: AiCallFailure {
            call_id: pending.call_id,
            request,
            error,
            attempts,
            latency_ms,
        },
        at: Utc::now(),
    }
}
