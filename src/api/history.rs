//! Auditors' history of one aggregate: its events, and its state as it was at a version or a
//! time, computed by replaying its events (never from a read model).

use async_graphql::{Context, Json, Object, SimpleObject};
use chronicle_aggregates::batch::Batch;
use chronicle_aggregates::dicom_server::DicomServer;
use chronicle_aggregates::request::Request;
use chronicle_aggregates::simulation::Simulation;
use chronicle_aggregates::transfer::TransferJob;
use chronicle_projections::RecordedEvent;
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::event_log::LogEvent;
use super::{ApiError, Caller};
use crate::command::CommandError;
use crate::reads::Reads;

/// Most events one `aggregateEvents` call returns.
const MAX_EVENTS: i64 = 1000;
/// Most events replayed for one `aggregateAt`.
const MAX_REPLAY: i64 = 1_000_000;

/// An aggregate's state as it was.
#[derive(SimpleObject)]
pub(crate) struct AggregateState {
    /// The aggregate's type.
    aggregate_type: String,
    /// The aggregate's id.
    aggregate_id: String,
    /// The version the state is at (the last event replayed; 0 before the first).
    version: i64,
    /// When that event was recorded.
    recorded_at: Option<DateTime<Utc>>,
    /// The state, as the aggregate serializes it.
    state: Json<Value>,
}

/// History queries.
#[derive(Default)]
pub(crate) struct HistoryQuery;

#[Object]
impl HistoryQuery {
    /// The events of one of your aggregates (`Request`, `Batch`, `Simulation`), in order from
    /// `fromSequence` (default 1), at most 1000 per call. Errors: `NOT_FOUND`, `VALIDATION`.
    async fn aggregate_events(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
        from_sequence: Option<i64>,
    ) -> Result<Vec<LogEvent>, ApiError> {
        owned(ctx, &aggregate_type, &aggregate_id).await?;
        let from = from_sequence.unwrap_or(1);
        if from < 1 {
            return Err(ApiError::Validation("fromSequence starts at 1".into()));
        }
        let events = ctx
            .data_unchecked::<Reads>()
            .log
            .aggregate_events(
                (&aggregate_type, &aggregate_id),
                from,
                (None, None),
                MAX_EVENTS,
            )
            .await?;
        Ok(events.into_iter().map(LogEvent::from).collect())
    }

    /// One of your aggregates as it was after event `version`, or as it was at time `at`
    /// (give one), by replaying its events. A version past its last one, or a time still to
    /// come, is an error, not its latest state. Errors: `NOT_FOUND`, `VALIDATION`.
    async fn aggregate_at(
        &self,
        ctx: &Context<'_>,
        aggregate_type: String,
        aggregate_id: String,
        version: Option<i64>,
        at: Option<DateTime<Utc>>,
    ) -> Result<AggregateState, ApiError> {
        owned(ctx, &aggregate_type, &aggregate_id).await?;
        if version.is_some() == at.is_some() {
            return Err(ApiError::Validation(
                "give exactly one of version and at".into(),
            ));
        }
        if version.is_some_and(|v| v < 0) {
            return Err(ApiError::Validation("version must be 0 or more".into()));
        }
        if at.is_some_and(|at| at > Utc::now()) {
            return Err(ApiError::Validation("`at` is still to come".into()));
        }
        let events = ctx
            .data_unchecked::<Reads>()
            .log
            .aggregate_events(
                (&aggregate_type, &aggregate_id),
                1,
                (version, at),
                MAX_REPLAY,
            )
            .await?;
        let (last_version, recorded_at) = events
            .last()
            .map_or((0, None), |e| (e.sequence, Some(e.recorded_at)));
        let replayed_all = i64::try_from(events.len()).unwrap_or(i64::MAX) < MAX_REPLAY;
        if let Some(wanted) = version.filter(|wanted| *wanted > last_version && replayed_all) {
            return Err(ApiError::Validation(format!(
                "version {wanted} is past the aggregate's last version, {last_version}"
            )));
        }
        let state = match aggregate_type.as_str() {
            "Request" => replay::<Request>(&events),
            "Batch" => replay::<Batch>(&events),
            "Simulation" => replay::<Simulation>(&events),
            "TransferJob" => replay::<TransferJob>(&events),
            "DicomServer" => replay::<DicomServer>(&events),
            other => {
                return Err(ApiError::Validation(format!(
                    "no time travel for aggregate type `{other}`"
                )))
            }
        }?;
        Ok(AggregateState {
            aggregate_type,
            aggregate_id,
            version: last_version,
            recorded_at,
            state: Json(state),
        })
    }
}

/// `NOT_FOUND` unless the aggregate exists and the caller owns it (an admin sees every one).
pub(crate) async fn owned(
    ctx: &Context<'_>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<(), ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    let owned: bool = sqlx::query_scalar(
        "SELECT CASE WHEN $3::text IS NULL
                     THEN EXISTS (SELECT 1 FROM events WHERE aggregate_type = $1
                                     AND aggregate_id = $2)
                     ELSE EXISTS (SELECT 1 FROM aggregate_owners WHERE aggregate_type = $1
                                     AND aggregate_id = $2 AND owner = $3) END",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(caller.scope())
    .fetch_one(&ctx.data_unchecked::<Reads>().pool)
    .await?;
    if owned {
        Ok(())
    } else {
        Err(ApiError::NotFound("aggregate"))
    }
}

/// The state `A` reaches by applying `events` to its default.
fn replay<A>(events: &[RecordedEvent]) -> Result<Value, ApiError>
where
    A: Aggregate + Serialize,
    A::Event: DeserializeOwned,
{
    let mut state = A::default();
    for event in events {
        let decoded: A::Event = event
            .decode()
            .map_err(|e| ApiError::Command(CommandError::Internal(e.to_string())))?;
        state.apply(decoded);
    }
    serde_json::to_value(&state)
        .map_err(|e| ApiError::Command(CommandError::Internal(e.to_string())))
}
