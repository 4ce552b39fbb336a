//! `simulations`, `simulation_messages` and `ai_calls`: sessions, their conversations, and
//! the audit of every AI call, from the simulation streams. Applied event by event: sessions
//! are conversations, not bulk data.

use async_trait::async_trait;
use chronicle_aggregates::simulation::{EndReason, SimulationEvent, SimulationStatus};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the simulation tables.
#[derive(Debug, Default, Clone, Copy)]
pub struct Simulations;

#[async_trait]
impl Projector for Simulations {
    fn name(&self) -> &'static str {
        "simulations"
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Simulation", "Subject"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["simulations", "simulation_messages", "ai_calls"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        for event in events {
            if event.event_type == "SubjectForgotten" {
                erase(conn, &event.aggregate_id).await?;
            }
            if event.aggregate_type != "Simulation" {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            apply(conn, id, event, event.decode()?).await?;
        }
        Ok(())
    }
}

/// Erases, at once, the personal columns of every simulation of a forgotten subject (a
/// rebuild shows the same fields erased, read from the sealed events).
async fn erase(conn: &mut PgConnection, subject_ref: &str) -> Result<(), sqlx::Error> {
    const OF_SUBJECT: &str = "SELECT aggregate_id::uuid FROM aggregate_subjects
                               WHERE aggregate_type = 'Simulation' AND element = 0
                                 AND subject_ref = $1";
    for statement in [
        format!("UPDATE simulations SET learner_id = '[erased]', feedback = NULL WHERE id IN ({OF_SUBJECT})"),
        format!("UPDATE simulation_messages SET text = '[erased]' WHERE simulation_id IN ({OF_SUBJECT})"),
        format!(
            "UPDATE ai_calls SET request = NULL, response_text = '[erased]', output = NULL
              WHERE simulation_id IN ({OF_SUBJECT})"
        ),
    ] {
        sqlx::query(&statement)
            .bind(subject_ref)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn apply(
    conn: &mut PgConnection,
    id: Uuid,
    recorded: &RecordedEvent,
    event: SimulationEvent,
) -> Result<(), sqlx::Error> {
    let (version, at) = (recorded.sequence, event.at());
    match event {
        SimulationEvent::Created {
            owner,
            spec,
            ends_at,
            ..
        } => {
            sqlx::query(
                "INSERT INTO simulations (id, owner, learner_id, diagnosis, chief_complaint,
                     difficulty, model, status, ends_at, version, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'created', $8, $9, $10, $10)",
            )
            .bind(id)
            .bind(owner)
            .bind(spec.learner_id)
            .bind(spec.scenario.diagnosis)
            .bind(spec.scenario.chief_complaint)
            .bind(spec.scenario.difficulty.as_str())
            .bind(spec.ai.model)
            .bind(ends_at)
            .bind(version)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        SimulationEvent::AiCallRequested {
            call_id, service, ..
        } => {
            let status: String = sqlx::query_scalar(
                "UPDATE simulations SET pending_call_id = $2, pending_service = $3
                  WHERE id = $1 RETURNING status",
            )
            .bind(id)
            .bind(call_id)
            .bind(service.as_str())
            .fetch_one(&mut *conn)
            .await?;
            // A retry takes a failed session back to where its call belonged.
            let before = SimulationStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == status);
            let after = SimulationEvent::AiCallRequested {
                call_id,
                service,
                at,
            }
            .status_after(before)
            .map_or(status, |s| s.as_str().to_owned());
            touch(conn, id, &after, version, at).await?;
            sqlx::query(
                "INSERT INTO ai_calls (call_id, simulation_id, service, model, status,
                                       requested_at)
                 SELECT $1, $2, $3, model, 'requested', $4 FROM simulations WHERE id = $2",
            )
            .bind(call_id)
            .bind(id)
            .bind(service.as_str())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        SimulationEvent::AiCallCompleted { call, .. } => {
            let tokens = call.usage.prompt.saturating_add(call.usage.completion);
            sqlx::query(
                "UPDATE ai_calls SET status = CASE status WHEN 'abandoned' THEN 'abandoned'
                                                           ELSE 'completed' END,
                        model = $2, request = $3,
                        response_text = $4, output = $5, prompt_tokens = $6,
                        completion_tokens = $7, finish_reason = $8, latency_ms = $9,
                        attempts = $10, finished_at = $11
                  WHERE call_id = $1",
            )
            .bind(call.call_id)
            .bind(&call.model)
            .bind(&call.request)
            .bind(&call.response_text)
            .bind(&call.output)
            .bind(i64::try_from(call.usage.prompt).unwrap_or(i64::MAX))
            .bind(i64::try_from(call.usage.completion).unwrap_or(i64::MAX))
            .bind(&call.finish_reason)
            .bind(i64::try_from(call.latency_ms).unwrap_or(i64::MAX))
            .bind(i32::try_from(call.attempts).unwrap_or(i32::MAX))
            .bind(at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE simulations
                    SET pending_service = CASE WHEN pending_call_id = $5 THEN NULL
                                               ELSE pending_service END,
                        pending_call_id = CASE WHEN pending_call_id = $5 THEN NULL
                                               ELSE pending_call_id END,
                        tokens_used = LEAST(tokens_used::numeric + $2,
                                            9223372036854775807)::bigint,
                        version = $3, updated_at = $4
                  WHERE id = $1",
            )
            .bind(id)
            .bind(i64::try_from(tokens).unwrap_or(i64::MAX))
            .bind(version)
            .bind(at)
            .bind(call.call_id)
            .execute(&mut *conn)
            .await?;
        }
        SimulationEvent::AiCallFailed { failure, .. } => {
            finish_call(conn, failure.call_id, "failed", Some(&failure.error), at).await?;
            sqlx::query(
                "UPDATE ai_calls SET request = $2, attempts = $3, latency_ms = $4
                  WHERE call_id = $1",
            )
            .bind(failure.call_id)
            .bind(&failure.request)
            .bind(i32::try_from(failure.attempts).unwrap_or(i32::MAX))
            .bind(i64::try_from(failure.latency_ms).unwrap_or(i64::MAX))
            .execute(&mut *conn)
            .await?;
            clear_pending(conn, id).await?;
            touch(conn, id, SimulationStatus::Failed.as_str(), version, at).await?;
        }
        SimulationEvent::MessagePosted { message } => {
            sqlx::query(
                "INSERT INTO simulation_messages (simulation_id, seq, role, text, call_id, at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(i32::try_from(message.seq).unwrap_or(i32::MAX))
            .bind(message.role.as_str())
            .bind(&message.text)
            .bind(message.call_id)
            .bind(message.at)
            .execute(&mut *conn)
            .await?;
            sqlx::query(
                "UPDATE simulations SET message_count = message_count + 1,
                        started_at = coalesce(started_at, $2)
                  WHERE id = $1",
            )
            .bind(id)
            .bind(message.at)
            .execute(&mut *conn)
            .await?;
            touch(conn, id, SimulationStatus::InProgress.as_str(), version, at).await?;
        }
        SimulationEvent::Ended {
            abandoned_call,
            reason,
            ..
        } => {
            if let Some(call_id) = abandoned_call {
                finish_call(conn, call_id, "abandoned", None, at).await?;
            }
            clear_pending(conn, id).await?;
            sqlx::query("UPDATE simulations SET ended_at = $2, end_reason = $3 WHERE id = $1")
                .bind(id)
                .bind(at)
                .bind(match reason {
                    EndReason::Learner => "learner",
                    EndReason::TimeLimit => "time_limit",
                })
                .execute(&mut *conn)
                .await?;
            touch(conn, id, SimulationStatus::Ended.as_str(), version, at).await?;
        }
        SimulationEvent::FeedbackRecorded { feedback, .. } => {
            sqlx::query("UPDATE simulations SET feedback = $2 WHERE id = $1")
                .bind(id)
                .bind(serde_json::to_value(&feedback).unwrap_or(Value::Null))
                .execute(&mut *conn)
                .await?;
            touch(
                conn,
                id,
                SimulationStatus::FeedbackReady.as_str(),
                version,
                at,
            )
            .await?;
        }
        SimulationEvent::Archived { .. } => {
            let pending: Option<Uuid> =
                sqlx::query_scalar("SELECT pending_call_id FROM simulations WHERE id = $1")
                    .bind(id)
                    .fetch_one(&mut *conn)
                    .await?;
            if let Some(call_id) = pending {
                finish_call(conn, call_id, "abandoned", None, at).await?;
            }
            clear_pending(conn, id).await?;
            touch(conn, id, SimulationStatus::Archived.as_str(), version, at).await?;
        }
    }
    Ok(())
}

async fn touch(
    conn: &mut PgConnection,
    id: Uuid,
    status: &str,
    version: i64,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE simulations SET status = $2, version = $3, updated_at = $4 WHERE id = $1")
        .bind(id)
        .bind(status)
        .bind(version)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

async fn clear_pending(conn: &mut PgConnection, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE simulations SET pending_call_id = NULL, pending_service = NULL WHERE id = $1",
    )
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

async fn finish_call(
    conn: &mut PgConnection,
    call_id: Uuid,
    status: &str,
    error: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ai_calls SET status = $2, error = $3, finished_at = $4 WHERE call_id = $1")
        .bind(call_id)
        .bind(status)
        .bind(error)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// A row of the `simulations` read model.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SimulationRow {
    /// The id.
    pub id: Uuid,
    /// The owning client.
    pub owner: String,
    /// The learner.
    pub learner_id: String,
    /// The case's diagnosis.
    pub diagnosis: String,
    /// The chief complaint.
    pub chief_complaint: String,
    /// `easy`, `medium` or `hard`.
    pub difficulty: String,
    /// The model.
    pub model: String,
    /// The status, e.g. `in_progress`.
    pub status: String,
    /// Messages so far.
    pub message_count: i32,
    /// Tokens used by its AI calls.
    pub tokens_used: i64,
    /// The service of the AI call it waits for.
    pub pending_service: Option<String>,
    /// When the time limit ends it.
    pub ends_at: Option<DateTime<Utc>>,
    /// The first message's time.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// `learner` or `time_limit`.
    pub end_reason: Option<String>,
    /// The hotwash.
    pub feedback: Option<Value>,
    /// The aggregate's version this row reflects.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, owner, learner_id, diagnosis, chief_complaint, difficulty, model,
                       status, message_count, tokens_used, pending_service, ends_at,
                       started_at, ended_at, end_reason, feedback, version, created_at,
                       updated_at";

/// One simulation, if `owner` (when given) owns it.
///
/// # Errors
/// Any database error.
pub async fn get(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    id: Uuid,
) -> Result<Option<SimulationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM simulations WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(db)
    .await
}

/// `owner`'s (`None`: everyone's) simulations, newest first, optionally of one status and learner, after the
/// keyset position `after`.
///
/// # Errors
/// Any database error.
pub async fn list(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    status: Option<&str>,
    learner_id: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<SimulationRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM simulations
          WHERE ($1::text IS NULL OR owner = $1) AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR learner_id = $3)
            AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
          ORDER BY created_at DESC, id DESC LIMIT $6"
    ))
    .bind(owner)
    .bind(status)
    .bind(learner_id)
    .bind(after.map(|(at, _)| at))
    .bind(after.map(|(_, id)| id))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A row of `simulation_messages`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct MessageRow {
    /// Its place in the conversation.
    pub seq: i32,
    /// `learner` or `patient`.
    pub role: String,
    /// What was said.
    pub text: String,
    /// The AI call behind a patient message.
    pub call_id: Option<Uuid>,
    /// When.
    pub at: DateTime<Utc>,
}

/// The conversation of simulation `id`, in order.
///
/// # Errors
/// Any database error.
pub async fn messages(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<MessageRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, role, text, call_id, at FROM simulation_messages
          WHERE simulation_id = $1 ORDER BY seq",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// A row of `ai_calls`.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct AiCallRow {
    /// The call.
    pub call_id: Uuid,
    /// `patient.initial`, `patient.reply` or `feedback.hotwash`.
    pub service: String,
    /// The model.
    pub model: String,
    /// `requested`, `completed`, `failed` or `abandoned`.
    pub status: String,
    /// The exact request sent.
    pub request: Option<Value>,
    /// The answer's text.
    pub response_text: Option<String>,
    /// The structured output.
    pub output: Option<Value>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens.
    pub completion_tokens: Option<i64>,
    /// Why generation stopped.
    pub finish_reason: Option<String>,
    /// Time over all attempts.
    pub latency_ms: Option<i64>,
    /// Attempts made.
    pub attempts: Option<i32>,
    /// The provider's error, for a failed call.
    pub error: Option<String>,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
    /// When it completed, failed or was abandoned.
    pub finished_at: Option<DateTime<Utc>>,
}

/// The AI calls of simulation `id`, oldest first.
///
/// # Errors
/// Any database error.
pub async fn ai_calls(db: impl PgExecutor<'_>, id: Uuid) -> Result<Vec<AiCallRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT call_id, service, model, status, request, response_text, output,
                prompt_tokens, completion_tokens, finish_reason, latency_ms, attempts, error,
                requested_at, finished_at
           FROM ai_calls WHERE simulation_id = $1 ORDER BY requested_at, call_id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}
