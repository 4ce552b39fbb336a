//! Simulations over GraphQL: set-up, the learner's turns, ending, archiving, retrying a
//! failed AI call; the session with its messages and AI-call audit; live messages.

use async_graphql::connection::Connection;
use async_graphql::{
    ComplexObject, Context, Enum, InputObject, Json, Object, SimpleObject, Subscription,
};
use chronicle_aggregates::simulation::{
    AiSettings, Difficulty, PatientProfile, Scenario, SimulationEvent, SimulationSpec,
};
use chronicle_projections::simulations::{self, AiCallRow, MessageRow, SimulationRow};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::event_log::aggregate_tail;
use super::outcome::{idempotency, CommandOutcome};
use super::pagination::{connection, keyset_page, KeysetCursor, KeysetPage};
use super::{ApiError, Caller};
use crate::reads::Reads;
use crate::simulation::SimulationActions;

/// How hard the case is.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum DifficultyInput {
    /// A textbook presentation.
    Easy,
    /// Some distractors.
    Medium,
    /// Atypical and evasive.
    Hard,
}

/// The clinical case.
#[derive(InputObject, Serialize)]
pub(crate) struct ScenarioInput {
    /// The diagnosis the learner should reach (the patient never names it).
    diagnosis: String,
    /// Why the patient came.
    chief_complaint: String,
    /// How hard it is.
    difficulty: DifficultyInput,
}

/// The simulated patient (personal data).
#[derive(InputObject, Serialize)]
pub(crate) struct PatientInput {
    /// Name.
    name: String,
    /// Age in years, 0 to 130.
    age: i32,
    /// Sex.
    sex: String,
    /// Medical and social history.
    history: String,
}

/// The model playing the patient.
#[derive(InputObject, Serialize)]
pub(crate) struct AiInput {
    /// The model, e.g. `gpt-4o-mini`.
    model: String,
    /// Sampling temperature, 0 to 2.
    temperature: Option<f64>,
    /// Most tokens per answer, 1 to 32000.
    max_tokens: Option<i32>,
}

/// A new simulation.
#[derive(InputObject, Serialize)]
pub(crate) struct CreateSimulationInput {
    /// The learner (a trainee clinician).
    learner_id: String,
    /// The case.
    scenario: ScenarioInput,
    /// The patient.
    patient: PatientInput,
    /// The AI.
    ai: AiInput,
    /// Seconds until the session ends by itself, 1 to 28800.
    time_limit_seconds: Option<i32>,
}

impl CreateSimulationInput {
    fn parse(self) -> Result<SimulationSpec, ApiError> {
        let mut problems = Vec::new();
        let age = u16::try_from(self.patient.age).unwrap_or_else(|_| {
            problems.push("patient age must be 0 to 130".to_owned());
            0
        });
        let max_tokens = self.ai.max_tokens.map(|n| {
            u32::try_from(n).unwrap_or_else(|_| {
                problems.push("max tokens must be 1 to 32000".to_owned());
                0
            })
        });
        let time_limit_seconds = self.time_limit_seconds.map(|n| {
            u32::try_from(n).unwrap_or_else(|_| {
                problems.push("time limit must be 1 to 28800 seconds".to_owned());
                0
            })
        });
        let spec = SimulationSpec {
            learner_id: self.learner_id,
            scenario: Scenario {
                diagnosis: self.scenario.diagnosis,
                chief_complaint: self.scenario.chief_complaint,
                difficulty: match self.scenario.difficulty {
                    DifficultyInput::Easy => Difficulty::Easy,
                    DifficultyInput::Medium => Difficulty::Medium,
                    DifficultyInput::Hard => Difficulty::Hard,
                },
            },
            patient: PatientProfile {
                name: self.patient.name,
                age,
                sex: self.patient.sex,
                history: self.patient.history,
            },
            ai: AiSettings {
                model: self.ai.model,
                temperature: self.ai.temperature,
                max_tokens,
            },
            time_limit_seconds,
        };
        match spec.validate() {
            Ok(spec) if problems.is_empty() => Ok(spec),
            Ok(_) => Err(ApiError::Validation(problems.join("; "))),
            Err(more) => {
                for problem in more {
                    if !problems.contains(&problem) {
                        problems.push(problem);
                    }
                }
                Err(ApiError::Validation(problems.join("; ")))
            }
        }
    }
}

/// A training session.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct SimulationView {
    /// The simulation's id.
    id: Uuid,
    /// The learner.
    learner_id: String,
    /// The case's diagnosis.
    diagnosis: String,
    /// The chief complaint.
    chief_complaint: String,
    /// `easy`, `medium` or `hard`.
    difficulty: String,
    /// The model.
    model: String,
    /// `created`, `in_progress`, `ended`, `feedback_ready`, `failed` or `archived`.
    status: String,
    /// Messages so far.
    message_count: i32,
    /// Tokens its AI calls used.
    tokens_used: i64,
    /// The AI call it waits for (`patient.initial`, `patient.reply`, `feedback.hotwash`).
    pending_service: Option<String>,
    /// When the time limit ends it.
    ends_at: Option<DateTime<Utc>>,
    /// The first message's time.
    started_at: Option<DateTime<Utc>>,
    /// When it ended.
    ended_at: Option<DateTime<Utc>>,
    /// `learner` or `time_limit`.
    end_reason: Option<String>,
    /// The hotwash: `went_well`, `missed`, `scores` (item, score 0–5, comment).
    feedback: Option<Json<Value>>,
    /// Version of its event stream that this view reflects.
    version: i64,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

impl From<SimulationRow> for SimulationView {
    fn from(row: SimulationRow) -> Self {
        Self {
            id: row.id,
            learner_id: row.learner_id,
            diagnosis: row.diagnosis,
            chief_complaint: row.chief_complaint,
            difficulty: row.difficulty,
            model: row.model,
            status: row.status,
            message_count: row.message_count,
            tokens_used: row.tokens_used,
            pending_service: row.pending_service,
            ends_at: row.ends_at,
            started_at: row.started_at,
            ended_at: row.ended_at,
            end_reason: row.end_reason,
            feedback: row.feedback.map(Json),
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// One message of a conversation.
#[derive(SimpleObject)]
pub(crate) struct SimulationMessage {
    /// Its place: 1, 2, 3, … without gaps.
    seq: i32,
    /// `learner` or `patient`.
    role: String,
    /// What was said.
    text: String,
    /// The AI call behind a patient message.
    call_id: Option<Uuid>,
    /// When.
    at: DateTime<Utc>,
}

impl From<MessageRow> for SimulationMessage {
    fn from(row: MessageRow) -> Self {
        Self {
            seq: row.seq,
            role: row.role,
            text: row.text,
            call_id: row.call_id,
            at: row.at,
        }
    }
}

/// The audit of one AI call.
#[derive(SimpleObject)]
pub(crate) struct AiCall {
    /// The call.
    call_id: Uuid,
    /// `patient.initial`, `patient.reply` or `feedback.hotwash`.
    service: String,
    /// The model.
    model: String,
    /// `requested`, `completed`, `failed` or `abandoned`.
    status: String,
    /// The exact request sent (messages, schema, settings).
    request: Option<Json<Value>>,
    /// The answer's text.
    response_text: Option<String>,
    /// The structured output.
    output: Option<Json<Value>>,
    /// Prompt tokens.
    prompt_tokens: Option<i64>,
    /// Completion tokens.
    completion_tokens: Option<i64>,
    /// Why generation stopped.
    finish_reason: Option<String>,
    /// Time over all attempts, in milliseconds.
    latency_ms: Option<i64>,
    /// Attempts made.
    attempts: Option<i32>,
    /// The provider's error, when it failed.
    error: Option<String>,
    /// When it was requested.
    requested_at: DateTime<Utc>,
    /// When it finished.
    finished_at: Option<DateTime<Utc>>,
}

impl From<AiCallRow> for AiCall {
    fn from(row: AiCallRow) -> Self {
        Self {
            call_id: row.call_id,
            service: row.service,
            model: row.model,
            status: row.status,
            request: row.request.map(Json),
            response_text: row.response_text,
            output: row.output.map(Json),
            prompt_tokens: row.prompt_tokens,
            completion_tokens: row.completion_tokens,
            finish_reason: row.finish_reason,
            latency_ms: row.latency_ms,
            attempts: row.attempts,
            error: row.error,
            requested_at: row.requested_at,
            finished_at: row.finished_at,
        }
    }
}

#[ComplexObject]
impl SimulationView {
    /// The conversation, in order.
    async fn messages(&self, ctx: &Context<'_>) -> Result<Vec<SimulationMessage>, ApiError> {
        let rows = simulations::messages(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        Ok(rows.into_iter().map(SimulationMessage::from).collect())
    }

    /// Every AI call, oldest first.
    async fn ai_calls(&self, ctx: &Context<'_>) -> Result<Vec<AiCall>, ApiError> {
        let rows = simulations::ai_calls(&ctx.data_unchecked::<Reads>().pool, self.id).await?;
        Ok(rows.into_iter().map(AiCall::from).collect())
    }
}

/// Simulation queries.
#[derive(Default)]
pub(crate) struct SimulationQuery;

#[Object]
impl SimulationQuery {
    /// One of your simulations. Errors: `NOT_FOUND`.
    async fn simulation(&self, ctx: &Context<'_>, id: Uuid) -> Result<SimulationView, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        simulations::get(&ctx.data_unchecked::<Reads>().pool, caller.scope(), id)
            .await?
            .map(SimulationView::from)
            .ok_or(ApiError::NotFound("simulation"))
    }

    /// Your simulations, newest first. Errors: `VALIDATION` (bad cursor or page size).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn simulations(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Only this status.")] status: Option<String>,
        #[graphql(desc = "Only this learner's.")] learner_id: Option<String>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, SimulationView>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let KeysetPage { size, after, limit } = keyset_page(first, after.as_deref())?;
        let rows = simulations::list(
            &ctx.data_unchecked::<Reads>().pool,
            caller.scope(),
            status.as_deref(),
            learner_id.as_deref(),
            after,
            limit,
        )
        .await?;
        Ok(connection(rows, size, after.is_some(), false, |row| {
            (
                KeysetCursor(row.created_at, row.id),
                SimulationView::from(row),
            )
        }))
    }
}

/// Simulation mutations.
#[derive(Default)]
pub(crate) struct SimulationMutation;

#[Object]
impl SimulationMutation {
    /// Sets up a simulation; the patient's opening line follows. The new id is the outcome's
    /// `aggregateId`. Errors: `VALIDATION`, `CONFLICT`.
    async fn create_simulation(
        &self,
        ctx: &Context<'_>,
        input: CreateSimulationInput,
        #[graphql(desc = "Retrying with the same key returns the first outcome.")]
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let key = idempotency(idempotency_key, &("createSimulation", &input))?;
        let spec = input.parse()?;
        let actions = ctx.data_unchecked::<SimulationActions>();
        Ok(actions
            .create(&caller.command_context(), spec, key)
            .await?
            .into())
    }

    /// The learner's message; the patient's reply follows. Errors: `NOT_FOUND`,
    /// `VALIDATION`, `CONFLICT` (the patient is still replying), `INVALID_TRANSITION`
    /// (ended, failed, or past its time limit).
    async fn post_message(
        &self,
        ctx: &Context<'_>,
        simulation_id: Uuid,
        text: String,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(
            idempotency_key.clone(),
            &("postMessage", simulation_id, &text),
        )?;
        act(ctx, simulation_id, SimulationActions::post(text), key).await
    }

    /// Ends the session; the feedback follows. Errors: `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn end_simulation(
        &self,
        ctx: &Context<'_>,
        simulation_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("endSimulation", simulation_id))?;
        act(ctx, simulation_id, SimulationActions::end(), key).await
    }

    /// Archives an ended (or failed) session. Errors: `NOT_FOUND`, `INVALID_TRANSITION`.
    async fn archive_simulation(
        &self,
        ctx: &Context<'_>,
        simulation_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("archiveSimulation", simulation_id))?;
        act(ctx, simulation_id, SimulationActions::archive(), key).await
    }

    /// Makes the failed AI call again (as a new call). Errors: `NOT_FOUND`,
    /// `INVALID_TRANSITION` (nothing failed).
    async fn retry_ai_call(
        &self,
        ctx: &Context<'_>,
        simulation_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        let key = idempotency(idempotency_key, &("retryAiCall", simulation_id))?;
        act(ctx, simulation_id, SimulationActions::retry(), key).await
    }
}

async fn act(
    ctx: &Context<'_>,
    id: Uuid,
    command: chronicle_aggregates::simulation::SimulationCommand,
    key: Option<crate::command::IdempotencyKey>,
) -> Result<CommandOutcome, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let actions = ctx.data_unchecked::<SimulationActions>();
    Ok(actions
        .command(&caller.command_context(), id, command, key)
        .await?
        .into())
}

/// A message as it is recorded, with where to resume.
#[derive(SimpleObject)]
pub(crate) struct SimulationMessageUpdate {
    /// Resume after this message with `after`.
    cursor: String,
    /// The message.
    message: SimulationMessage,
}

/// Simulation subscriptions.
#[derive(Default)]
pub(crate) struct SimulationSubscription;

#[Subscription]
impl SimulationSubscription {
    /// Each message of one of your simulations as it is recorded: the conversation so far
    /// first (or after `after`), then live. Errors: `NOT_FOUND`, `VALIDATION` (bad cursor).
    async fn simulation_messages(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(desc = "Resume after this cursor; from the first message when omitted.")]
        after: Option<String>,
    ) -> Result<impl Stream<Item = SimulationMessageUpdate>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        ctx.data_unchecked::<SimulationActions>()
            .owned(caller.scope(), id)
            .await?;
        let stream = aggregate_tail(ctx, "Simulation", id, after.as_deref()).await?;
        Ok(stream.filter_map(|event| async move {
            let cursor = event.cursor.to_string();
            match event.decode::<SimulationEvent>().ok()? {
                SimulationEvent::MessagePosted { message } => Some(SimulationMessageUpdate {
                    cursor,
                    message: SimulationMessage {
                        seq: i32::try_from(message.seq).unwrap_or(i32::MAX),
                        role: message.role.as_str().to_owned(),
                        text: message.text,
                        call_id: message.call_id,
                        at: message.at,
                    },
                }),
                SimulationEvent::Created { .. }
                | SimulationEvent::AiCallRequested { .. }
                | SimulationEvent::AiCallCompleted { .. }
                | SimulationEvent::AiCallFailed { .. }
                | SimulationEvent::Ended { .. }
                | SimulationEvent::FeedbackRecorded { .. }
                | SimulationEvent::Archived { .. } => None,
            }
        }))
    }
}
