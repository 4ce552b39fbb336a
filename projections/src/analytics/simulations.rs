//! `analytics.simulation_daily`, from the simulation streams.

use std::collections::HashMap;

use async_trait::async_trait;
use chronicle_aggregates::simulation::SimulationEvent;
use chrono::NaiveDate;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{big, day};
use crate::{FailurePolicy, ProjectionError, Projector, RecordedEvent};

/// The projector behind simulation analytics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimulationAnalytics;

#[derive(Default)]
struct Activity {
    sessions: u64,
    messages: u64,
    ai_calls: u64,
    failed_calls: u64,
    tokens: u64,
    feedbacks: u64,
    score_total: u64,
    scores: u64,
}

#[async_trait]
impl Projector for SimulationAnalytics {
    fn name(&self) -> &'static str {
        "analytics_simulations"
    }

    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::GO_ON
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&["Simulation"])
    }

    fn tables(&self) -> &'static [&'static str] {
        &["analytics.simulation_keys", "analytics.simulation_daily"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut activity: HashMap<(String, NaiveDate), Activity> = HashMap::new();
        let mut keys: HashMap<Uuid, (String, NaiveDate)> = HashMap::new();
        for event in events.iter().filter(|e| e.aggregate_type == "Simulation") {
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let decoded: SimulationEvent = event.decode()?;
            if let SimulationEvent::Created { owner, at, .. } = &decoded {
                let key = (owner.clone(), day(*at));
                sqlx::query(
                    "INSERT INTO simulation_keys (simulation_id, owner, day)
                     VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(&key.0)
                .bind(key.1)
                .execute(&mut *conn)
                .await?;
                keys.insert(id, key);
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = keys.entry(id) {
                let known: Option<(String, NaiveDate)> = sqlx::query_as(
                    "SELECT owner, day FROM simulation_keys WHERE simulation_id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(key) = known else {
                    continue;
                };
                slot.insert(key);
            }
            let Some(key) = keys.get(&id) else {
                continue;
            };
            let row = activity.entry(key.clone()).or_default();
            match decoded {
                SimulationEvent::Created { .. } => row.sessions += 1,
                SimulationEvent::MessagePosted { .. } => row.messages += 1,
                SimulationEvent::AiCallCompleted { call, .. } => {
                    row.ai_calls += 1;
                    row.tokens = row
                        .tokens
                        .saturating_add(call.usage.prompt)
                        .saturating_add(call.usage.completion);
                }
                SimulationEvent::AiCallFailed { .. } => row.failed_calls += 1,
                SimulationEvent::FeedbackRecorded { feedback, .. } => {
                    row.feedbacks += 1;
                    row.scores += feedback.scores.len() as u64;
                    row.score_total += feedback
                        .scores
                        .iter()
                        .map(|s| u64::from(s.score))
                        .sum::<u64>();
                }
                SimulationEvent::AiCallRequested { .. }
                | SimulationEvent::Ended { .. }
                | SimulationEvent::Archived { .. } => {}
            }
        }
        for ((owner, day), row) in activity {
            sqlx::query(
                "INSERT INTO simulation_daily AS s (owner, day, sessions, messages,
                     ai_calls, failed_calls, tokens, feedbacks, score_total, scores)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (owner, day) DO UPDATE SET
                     sessions = s.sessions + excluded.sessions,
                     messages = s.messages + excluded.messages,
                     ai_calls = s.ai_calls + excluded.ai_calls,
                     failed_calls = s.failed_calls + excluded.failed_calls,
                     tokens = s.tokens + excluded.tokens,
                     feedbacks = s.feedbacks + excluded.feedbacks,
                     score_total = s.score_total + excluded.score_total,
                     scores = s.scores + excluded.scores",
            )
            .bind(owner)
            .bind(day)
            .bind(big(row.sessions))
            .bind(big(row.messages))
            .bind(big(row.ai_calls))
            .bind(big(row.failed_calls))
            .bind(big(row.tokens))
            .bind(big(row.feedbacks))
            .bind(big(row.score_total))
            .bind(big(row.scores))
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
