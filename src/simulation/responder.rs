//! The AI responder: makes every AI call a simulation waits for — the patient's opening line
//! and replies, and the feedback — and records each as completed or failed; it also ends
//! sessions whose time limit passed.
//!
//! Live instances share the work by partitions of the simulation id space, one instance
//! per simulation at a time (`Roles::partitioned`). Work comes from the `simulations` read
//! model (a pending call); the call itself is built from the aggregate's own state, and
//! recording checks that the call is still the pending one, so a call made twice (after a
//! crash, or a lagging read model) is persisted once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chronicle_aggregates::simulation::{
    AiCallFailure, AiCallRecord, AiOutput, EndReason, PendingCall, Simulation, SimulationCommand,
    TokenUsage,
};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::prompt;
use crate::command::{CommandContext, CommandError, Commands};
use crate::log::{next_due, LogWaker, Waiter};
use crate::projection::Role;
use crate::provider::ChatClient;

/// AI calls in flight at once.
const PARALLEL: usize = 16;

/// The responder.
pub struct Responder {
    commands: Commands,
    pool: PgPool,
    chat: ChatClient,
    poll_every: Duration,
}

/// When the next running session reaches its time limit.
const TIME_LIMIT_DUE: &str = "SELECT min(ends_at) FROM simulations
      WHERE status IN ('created', 'in_progress', 'failed') AND ended_at IS NULL
        AND ends_at > now() AND chronicle_partition(id) = ANY($1)";

impl Responder {
    /// A responder calling `chat`.
    pub fn new(commands: Commands, pool: PgPool, chat: ChatClient, poll_every: Duration) -> Self {
        Self {
            commands,
            pool,
            chat,
            poll_every,
        }
    }

    /// The role that lets an instance answer simulations.
    pub const ROLE: &'static str = "simulation_responder";

    /// Runs until `shutdown`, responding while this instance holds `role`; `waker` tells
    /// it when read models changed.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        let responder = Arc::new(self);
        let pause = responder.poll_every;
        role.lead_while_held(pause, &shutdown, |role| {
            let wake = waker.following(&["simulations"]);
            responder.clone().respond_while(role, wake, &shutdown)
        })
        .await;
    }

    /// Starts a task per simulation with a pending call (one at a time per simulation), so
    /// a slow call holds up only its own session; stops when the role is lost. It looks for
    /// work when read models change (at most every `poll_every`), when a call ends and when a
    /// session's time limit falls due.
    async fn respond_while(
        self: Arc<Self>,
        mut role: Role,
        mut wake: Waiter,
        shutdown: &CancellationToken,
    ) {
        let mut tasks: JoinSet<Uuid> = JoinSet::new();
        let mut busy: HashSet<Uuid> = HashSet::new();
        while !shutdown.is_cancelled() && role.is_held() {
            let looked = tokio::time::Instant::now();
            while let Some(done) = tasks.try_join_next() {
                if let Ok(id) = done {
                    busy.remove(&id);
                }
            }
            match self.due(&busy, &role).await {
                Ok(due) => {
                    for id in due.into_iter().take(PARALLEL.saturating_sub(busy.len())) {
                        let Some(lease) = role.lease(id) else {
                            continue;
                        };
                        busy.insert(id);
                        let responder = self.clone();
                        tasks.spawn(async move {
                            responder.respond(id).await;
                            drop(lease);
                            id
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "simulation responder cannot read its work"),
            }
            let due = next_due(&self.pool, TIME_LIMIT_DUE, &role.partitions()).await;
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(id) = done {
                        busy.remove(&id);
                    }
                }
                () = wake.wait_until(due) => {
                    tokio::time::sleep_until(looked + self.poll_every).await;
                }
                () = role.changed() => {}
                () = shutdown.cancelled() => {}
            }
        }
        tasks.abort_all();
    }

    /// Ends timed-out sessions; returns the simulations with a pending call not under way.
    async fn due(&self, busy: &HashSet<Uuid>, role: &Role) -> Result<Vec<Uuid>, sqlx::Error> {
        let partitions = role.partitions();
        let expired: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM simulations
              WHERE status IN ('created', 'in_progress', 'failed') AND ended_at IS NULL
                AND ends_at <= now() AND chronicle_partition(id) = ANY($1) LIMIT 100",
        )
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await?;
        for id in expired.into_iter().filter(|id| !busy.contains(id)) {
            let Some(_lease) = role.lease(id) else {
                continue;
            };
            let command = SimulationCommand::End {
                reason: EndReason::TimeLimit,
                at: Utc::now(),
            };
            self.record(id, command).await;
        }
        let busy: Vec<Uuid> = busy.iter().copied().collect();
        sqlx::query_scalar(
            "SELECT id FROM simulations
              WHERE pending_call_id IS NOT NULL AND status IN ('created', 'in_progress', 'ended')
                AND NOT (id = ANY($1)) AND chronicle_partition(id) = ANY($3)
              ORDER BY updated_at LIMIT $2",
        )
        .bind(&busy)
        .bind(i64::try_from(PARALLEL).unwrap_or(i64::MAX))
        .bind(&partitions)
        .fetch_all(&self.pool)
        .await
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
                failed.error.to_string().replace('\0', ""),
                failed.attempts,
                failed.latency_ms,
            ),
        };
        let outcome = match &command {
            SimulationCommand::RecordAiResult { .. } => "completed",
            SimulationCommand::Create { .. }
            | SimulationCommand::PostMessage { .. }
            | SimulationCommand::RecordAiFailure { .. }
            | SimulationCommand::RetryAiCall { .. }
            | SimulationCommand::End { .. }
            | SimulationCommand::Archive { .. } => "failed",
        };
        metrics::counter!("chronicle_ai_calls_total", "service" => pending.service.as_str(),
                          "outcome" => outcome)
        .increment(1);
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
