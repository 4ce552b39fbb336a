//! Projections for operators: where each stands, what it parked, and the actions on them
//! (retry or skip a parked event, rebuild a projection). Admin only.

use async_graphql::{ComplexObject, Context, Enum, Object, SimpleObject};
use chronicle_projections::checkpoint::{self, Status};
use chronicle_projections::parked::{self, Parked, ParkedStatus as StoredStatus};
use chronicle_projections::rebuilds::{self, Phase, Rebuild};
use chronicle_projections::LogCursor;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{ApiError, Caller};
use crate::log::LogReader;
use crate::projection::{self, ParkedAction, ParkedError, Projectors};

/// How a projection stands.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProjectionState {
    /// Applying the log as it grows (its lag says how far behind it is).
    Live,
    /// Live, and rebuilt beside the live tables, which keep answering until the swap.
    Rebuilding,
    /// Stopped at a parked event until an admin retries or skips it.
    Halted,
}

/// Where a rebuild beside the live tables stands.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RebuildPhase {
    /// Loading copies of the tables from the log, with their unique indexes only.
    Building,
    /// The copies have every index; keeping up with the log until they are swapped in.
    Finishing,
    /// Gave up on an error; the live tables are unchanged. `rebuildProjection` starts again.
    Failed,
}

/// A rebuild beside the live tables, in progress or failed (a swapped-in one is gone).
#[derive(SimpleObject)]
pub(crate) struct ProjectionRebuild {
    /// The projector version the copies are built with.
    version: i32,
    /// Where it stands.
    phase: RebuildPhase,
    /// The last event the copies applied.
    cursor: String,
    /// Events the copies applied.
    events_applied: i64,
    /// The API key (or `cli`, `start-up`) that asked for it.
    requested_by: String,
    /// When it was asked for.
    requested_at: DateTime<Utc>,
    /// When the copies last moved.
    updated_at: DateTime<Utc>,
    /// Why it failed.
    error: Option<String>,
}

impl From<Rebuild> for ProjectionRebuild {
    fn from(rebuild: Rebuild) -> Self {
        let phase = match rebuild.phase {
            Phase::Building => RebuildPhase::Building,
            Phase::Finishing | Phase::Swapped | Phase::Cancelled => RebuildPhase::Finishing,
            Phase::Failed => RebuildPhase::Failed,
        };
        Self {
            version: rebuild.version,
            phase,
            cursor: rebuild.cursor.to_string(),
            events_applied: rebuild.events_applied,
            requested_by: rebuild.requested_by,
            requested_at: rebuild.requested_at,
            updated_at: rebuild.updated_at,
            error: rebuild.error,
        }
    }
}

/// Where a parked event stands.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParkedStatus {
    /// Set aside: `retryParked` or `skipParked` resolves it.
    Parked,
    /// A retry applied it.
    Applied,
    /// An admin skipped it: the projection never applies it.
    Skipped,
}

impl From<StoredStatus> for ParkedStatus {
    fn from(status: StoredStatus) -> Self {
        match status {
            StoredStatus::Parked => Self::Parked,
            StoredStatus::Applied => Self::Applied,
            StoredStatus::Skipped => Self::Skipped,
        }
    }
}

/// An event a projection failed on after every attempt its policy allows.
#[derive(SimpleObject)]
pub(crate) struct ParkedEvent {
    /// The projection that failed on it.
    projection: String,
    /// The event's log cursor (as in `eventLog`).
    cursor: String,
    /// Its aggregate's type.
    aggregate_type: String,
    /// Its aggregate's id.
    aggregate_id: String,
    /// Its place in its aggregate's stream.
    sequence: i64,
    /// Its type.
    event_type: String,
    /// Failed attempts so far.
    attempts: i32,
    /// The last failure.
    error: String,
    /// Whether the projection halted on it (rather than going on past it).
    halted: bool,
    /// Where it stands.
    status: ParkedStatus,
    /// When it was parked.
    parked_at: DateTime<Utc>,
    /// The client whose key retried or skipped it.
    resolved_by: Option<String>,
    /// When it was retried or skipped.
    resolved_at: Option<DateTime<Utc>>,
}

impl From<Parked> for ParkedEvent {
    fn from(parked: Parked) -> Self {
        Self {
            projection: parked.projection,
            cursor: LogCursor::at(parked.position).to_string(),
            aggregate_type: parked.aggregate_type,
            aggregate_id: parked.aggregate_id,
            sequence: parked.sequence,
            event_type: parked.event_type,
            attempts: parked.attempts,
            error: parked.error,
            halted: parked.halted,
            status: parked.status.into(),
            parked_at: parked.parked_at,
            resolved_by: parked.resolved_by,
            resolved_at: parked.resolved_at,
        }
    }
}

/// One projection: its progress, state and parked events.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct Projection {
    /// The projector's name.
    name: String,
    /// The projector version that built the live tables.
    version: i32,
    /// Whether commands apply it in their own transaction (a read model callers read back).
    inline: bool,
    /// How it stands.
    state: ProjectionState,
    /// The last applied event's log cursor.
    cursor: String,
    /// Events the live tables hold (applied since they were built).
    events_applied: i64,
    /// Committed events of its types not applied yet.
    lag: i64,
    /// How long the oldest of those has waited, in seconds (0 without lag).
    lag_seconds: f64,
    /// While rebuilding: how far the copies are, in percent of the log.
    rebuild_progress: Option<f64>,
    /// Its rebuild beside the live tables, in progress or failed.
    rebuild: Option<ProjectionRebuild>,
    /// Its parked events not resolved yet.
    parked_count: i64,
    /// When its checkpoint last moved.
    updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl Projection {
    /// Its parked events, resolved ones too, newest first.
    async fn parked(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 100, validator(minimum = 1, maximum = 1000))] limit: i64,
    ) -> Result<Vec<ParkedEvent>, ApiError> {
        let pool = ctx.data_unchecked::<PgPool>();
        let listed = parked::list(pool, Some(&[self.name.as_str()]), limit).await?;
        Ok(listed.into_iter().map(ParkedEvent::from).collect())
    }
}

impl Projection {
    fn of(status: Status) -> Self {
        let state = match status.state() {
            checkpoint::State::Live => ProjectionState::Live,
            checkpoint::State::Rebuilding => ProjectionState::Rebuilding,
            checkpoint::State::Halted => ProjectionState::Halted,
        };
        let rebuild_progress = status.rebuild_progress().map(|done| done * 100.0);
        Self {
            inline: projection::inline().iter().any(|p| p.name() == status.name),
            version: status.version,
            rebuild: status.rebuild.map(ProjectionRebuild::from),
            name: status.name,
            state,
            cursor: status.cursor.to_string(),
            events_applied: status.events_applied,
            lag: status.lag,
            lag_seconds: status.lag_seconds,
            rebuild_progress,
            parked_count: status.parked,
            updated_at: status.updated_at,
        }
    }
}

async fn statuses(ctx: &Context<'_>) -> Result<Vec<Projection>, ApiError> {
    let pool = ctx.data_unchecked::<PgPool>();
    let projectors = ctx.data_unchecked::<Projectors>();
    let statuses = checkpoint::status(pool, projectors.all()).await?;
    Ok(statuses.into_iter().map(Projection::of).collect())
}

/// Projection queries.
#[derive(Default)]
pub(crate) struct ProjectionQuery;

#[Object]
impl ProjectionQuery {
    /// Every projection's state, progress, lag and parked events (admin). Errors:
    /// `FORBIDDEN`.
    async fn projections(&self, ctx: &Context<'_>) -> Result<Vec<Projection>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        statuses(ctx).await
    }
}

/// Operators' actions on projections.
#[derive(Default)]
pub(crate) struct ProjectionMutation;

#[Object]
impl ProjectionMutation {
    /// Applies a parked event now, once (admin); a projection halted on it goes on. Errors:
    /// `FORBIDDEN`; `VALIDATION` (a malformed cursor); `NOT_FOUND` (no such projection or
    /// parked event); `INVALID_TRANSITION` (retried or skipped already);
    /// `PROJECTION_FAILED` (it failed again: it stays parked with the new error).
    async fn retry_parked(
        &self,
        ctx: &Context<'_>,
        projection: String,
        cursor: String,
    ) -> Result<ParkedEvent, ApiError> {
        resolve(ctx, &projection, &cursor, ParkedAction::Retry).await
    }

    /// Gives a parked event up for good, recording who did (admin); a projection halted on
    /// it goes on past it. Errors: `FORBIDDEN`; `VALIDATION`; `NOT_FOUND`;
    /// `INVALID_TRANSITION`.
    async fn skip_parked(
        &self,
        ctx: &Context<'_>,
        projection: String,
        cursor: String,
    ) -> Result<ParkedEvent, ApiError> {
        resolve(ctx, &projection, &cursor, ParkedAction::Skip).await
    }

    /// Rebuilds a projection beside the live one (admin): copies of its tables are loaded
    /// from the log and swapped in once they have caught up, while the live tables keep
    /// answering; `projections` shows the progress. Asking again while it runs changes
    /// nothing; a failed rebuild starts again. Errors: `FORBIDDEN`; `NOT_FOUND`.
    async fn rebuild_projection(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<Projection, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        let projectors = ctx.data_unchecked::<Projectors>();
        let projector = projectors
            .find(&name)
            .ok_or(ApiError::NotFound("projection"))?;
        let pool = ctx.data_unchecked::<PgPool>();
        rebuilds::request(pool, &name, projector.version(), &caller.actor).await?;
        projection_named(ctx, &name).await
    }

    /// Calls off a projection's rebuild, or dismisses its failure (admin): its copies are
    /// dropped and the live tables stay as they are. A projector whose version changed is
    /// asked for again at the next start. Errors: `FORBIDDEN`; `NOT_FOUND` (no such
    /// projection, or no rebuild of it).
    async fn cancel_rebuild(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<Projection, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let pool = ctx.data_unchecked::<PgPool>();
        if !projection::cancel_rebuild(pool, &name).await? {
            return Err(ApiError::NotFound("rebuild"));
        }
        projection_named(ctx, &name).await
    }
}

/// The status of projection `name` as it stands now.
async fn projection_named(ctx: &Context<'_>, name: &str) -> Result<Projection, ApiError> {
    statuses(ctx)
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or(ApiError::NotFound("projection"))
}

/// An admin's `action` on the parked event of `projection` at `cursor`.
async fn resolve(
    ctx: &Context<'_>,
    projection: &str,
    cursor: &str,
    action: ParkedAction,
) -> Result<ParkedEvent, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    caller.require_admin()?;
    let position = cursor.parse::<LogCursor>()?.position;
    let resolved = projection::resolve_parked(
        ctx.data_unchecked::<PgPool>(),
        ctx.data_unchecked::<LogReader>(),
        ctx.data_unchecked::<Projectors>().all(),
        (projection, position),
        (action, &caller.actor),
    )
    .await?;
    Ok(resolved.into())
}

impl From<ParkedError> for ApiError {
    fn from(error: ParkedError) -> Self {
        Self::Parked(error)
    }
}
