//! `transitions`: the audit trail of every state change of every aggregate, with who caused
//! it and where it stands in the log.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chronicle_aggregates::batch::BatchEvent;
use chronicle_aggregates::request::RequestEvent;
use chronicle_aggregates::simulation::{SimulationEvent, SimulationStatus};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::{ProjectionError, Projector, RecordedEvent};

/// The projector behind the `transitions` table.
#[derive(Debug, Default, Clone, Copy)]
pub struct Transitions;

/// Batch events that change no state: adding requests, a withdrawal, provider progress.
const BATCH_EVENTS_KEEPING_STATE: [&str; 4] = [
    "BatchRequestsAdded",
    "BatchRequestWithdrawn",
    "BatchProviderProgressed",
    "BatchProviderCancelRequested",
];

/// Whether `event` may change its aggregate's state. A request's and a batch's follow from
/// the event's type: their (large) payloads are not read.
fn may_change_state(event: &RecordedEvent) -> bool {
    match event.aggregate_type.as_str() {
        // An attempt leaves a delivering request delivering.
        "Request" => event.event_type != "RequestDeliveryAttempted",
        "Batch" => !BATCH_EVENTS_KEEPING_STATE.contains(&event.event_type.as_str()),
        "Simulation" => true,
        _ => false,
    }
}

/// The state an event leaves its aggregate in (which was in `before`), or `None` when it
/// changes no state.
fn state_after(
    event: &RecordedEvent,
    before: Option<&str>,
) -> Result<Option<&'static str>, ProjectionError> {
    if !may_change_state(event) {
        return Ok(None);
    }
    Ok(match event.aggregate_type.as_str() {
        "Simulation" => {
            let before = SimulationStatus::ALL
                .into_iter()
                .find(|s| Some(s.as_str()) == before);
            let after = event.decode::<SimulationEvent>()?.status_after(before);
            after
                .filter(|to| Some(*to) != before)
                .map(SimulationStatus::as_str)
        }
        "Request" => {
            let status = RequestEvent::status_after_type(&event.event_type).ok_or_else(|| {
                ProjectionError::Malformed {
                    position: event.cursor.position,
                    event_type: event.event_type.clone(),
                    reason: "not a request event".into(),
                }
            })?;
            Some(status.as_str())
        }
        "Batch" => Some(event.decode::<BatchEvent>()?.status().as_str()),
        _ => None,
    })
}

/// The aggregates whose state before `events` must be read: those that may change state
/// and did not start in this page (a stream's first event has sequence 1).
fn with_earlier_state<'e>(events: &[&'e RecordedEvent]) -> (Vec<&'e str>, Vec<&'e str>) {
    let mut started = HashSet::new();
    let mut keys = HashSet::new();
    for event in events {
        let key = (event.aggregate_type.as_str(), event.aggregate_id.as_str());
        if event.sequence == 1 {
            started.insert(key);
        }
        if may_change_state(event) && !started.contains(&key) {
            keys.insert(key);
        }
    }
    let mut keys: Vec<_> = keys.into_iter().collect();
    keys.sort_unstable();
    keys.into_iter().unzip()
}

/// Each of these aggregates' latest recorded state, one index probe each.
async fn latest_states(
    conn: &mut PgConnection,
    (types, ids): (Vec<&str>, Vec<&str>),
) -> Result<HashMap<(String, String), String>, sqlx::Error> {
    if types.is_empty() {
        return Ok(HashMap::new());
    }
    let previous: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT k.aggregate_type, k.aggregate_id, t.to_state
           FROM UNNEST($1::text[], $2::text[]) AS k(aggregate_type, aggregate_id)
           CROSS JOIN LATERAL (
                 SELECT to_state FROM transitions
                  WHERE aggregate_id = k.aggregate_id
                    AND aggregate_type = k.aggregate_type
                  ORDER BY sequence DESC LIMIT 1) t",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(previous
        .into_iter()
        .map(|(kind, id, state)| ((kind, id), state))
        .collect())
}

#[async_trait]
impl Projector for Transitions {
    fn name(&self) -> &'static str {
        "transitions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["transitions"]
    }

    fn apply_indexes(&self) -> &'static [&'static str] {
        // Each page looks up its aggregates' latest states.
        &["transitions_aggregate"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError> {
        let mut current = latest_states(&mut *conn, with_earlier_state(events)).await?;
        let mut rows = Rows::default();
        for event in events {
            let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let Some(to) = state_after(event, current.get(&key).map(String::as_str))? else {
                continue;
            };
            rows.from.push(current.insert(key, to.to_owned()));
            rows.positions.push(event.cursor.position);
            rows.types.push(event.aggregate_type.as_str());
            rows.ids.push(event.aggregate_id.as_str());
            rows.sequences.push(event.sequence);
            rows.to.push(to);
            rows.event_types.push(event.event_type.as_str());
            rows.actors.push(event.metadata.actor.as_str());
            rows.correlations
                .push(event.metadata.correlation_id.as_str());
            rows.times.push(event.recorded_at);
        }
        if rows.positions.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO transitions (position, aggregate_type, aggregate_id, sequence, from_state,
                                      to_state, event_type, actor, correlation_id, recorded_at)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::text[],
                                  $6::text[], $7::text[], $8::text[], $9::text[],
                                  $10::timestamptz[])",
        )
        .bind(rows.positions)
        .bind(rows.types)
        .bind(rows.ids)
        .bind(rows.sequences)
        .bind(rows.from)
        .bind(rows.to)
        .bind(rows.event_types)
        .bind(rows.actors)
        .bind(rows.correlations)
        .bind(rows.times)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Rows<'a> {
    positions: Vec<i64>,
    types: Vec<&'a str>,
    ids: Vec<&'a str>,
    sequences: Vec<i64>,
    from: Vec<Option<String>>,
    to: Vec<&'static str>,
    event_types: Vec<&'a str>,
    actors: Vec<&'a str>,
    correlations: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
}

/// One recorded state change.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Transition {
    /// The event's global position.
    pub position: i64,
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The event's sequence in its aggregate.
    pub sequence: i64,
    /// The state before, `None` for the first.
    pub from_state: Option<String>,
    /// The state after.
    pub to_state: String,
    /// The event that changed it.
    pub event_type: String,
    /// Who caused it.
    pub actor: String,
    /// The client call it belongs to.
    pub correlation_id: String,
    /// When.
    pub recorded_at: DateTime<Utc>,
}

/// Every state change of one of `owner`'s requests or batches, oldest first.
///
/// # Errors
/// Any database error.
pub async fn of_aggregate(
    db: impl PgExecutor<'_>,
    owner: Option<&str>,
    aggregate_id: uuid::Uuid,
) -> Result<Vec<Transition>, sqlx::Error> {
    sqlx::query_as(
        "SELECT position, aggregate_type, aggregate_id, sequence, from_state, to_state,
                event_type, actor, correlation_id, recorded_at
           FROM transitions
          WHERE aggregate_id = $1::text
            AND (EXISTS (SELECT 1 FROM requests WHERE id = $1 AND ($2::text IS NULL OR owner = $2))
                 OR EXISTS (SELECT 1 FROM batches WHERE id = $1 AND ($2::text IS NULL OR owner = $2)))
          ORDER BY sequence",
    )
    .bind(aggregate_id)
    .bind(owner)
    .fetch_all(db)
    .await
}
