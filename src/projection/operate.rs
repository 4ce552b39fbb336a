//! What operators do to parked events: retry or skip them.
//! Each takes the locks the projector's own runner takes (the log lock for an inline
//! projector, then its checkpoint), so it never races a page being applied.

use std::sync::Arc;

use chronicle_projections::parked::{self, Parked, ParkedStatus, Resolution};
use chronicle_projections::{checkpoint, LogCursor, ProjectionError, Projector, RecordedEvent};
use sqlx::{PgConnection, PgPool};

use crate::log::{LogFilter, LogReader};
use crate::store::lock_log;

/// Why an operator's action on a parked event did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum ParkedError {
    /// No projector has this name.
    #[error("no projection `{0}`")]
    UnknownProjection(String),
    /// The projector has no parked event at this position.
    #[error("projection `{0}` has no parked event at log position {1}")]
    NotParked(String, i64),
    /// The event was retried or skipped already.
    #[error("the parked event is {} already", .0.as_str())]
    Resolved(ParkedStatus),
    /// The projector failed on the event again; it stays parked with this error.
    #[error("the projector failed on the event again: {0}")]
    FailedAgain(ProjectionError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// What an admin does with a parked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkedAction {
    /// Apply it now, once; a projector halted on it goes on from there.
    Retry,
    /// Give it up for good; a projector halted on it goes on past it.
    Skip,
}

/// Does `action` to the parked event of projector `name` at `position`, recording that `by`
/// did; the event as it stands after.
///
/// # Errors
/// [`ParkedError`]: unknown projector or event, already resolved, or (a retry) failed
/// again: then the event stays parked with the new error and one more attempt counted.
pub async fn resolve_parked(
    pool: &PgPool,
    reader: &LogReader,
    projectors: &[Arc<dyn Projector>],
    (name, position): (&str, i64),
    (action, by): (ParkedAction, &str),
) -> Result<Parked, ParkedError> {
    let projector = find(projectors, name)?;
    // Read before taking the locks: the read takes another pooled connection, and appends
    // waiting on the log lock could hold them all.
    let event = match action {
        ParkedAction::Retry => read_event(reader, position).await?,
        ParkedAction::Skip => None,
    };
    let mut tx = pool.begin().await?;
    let (parked, stored) = lock_parked(&mut tx, projector.as_ref(), position).await?;
    let halted_on_it = stored < LogCursor::at(position);
    match action {
        ParkedAction::Skip => {
            resolve(
                tx,
                &parked,
                Resolution::Skipped,
                by,
                halted_on_it.then_some(0),
            )
            .await
        }
        ParkedAction::Retry => {
            if let Err(error) = apply(&mut tx, projector.as_ref(), &parked, event.as_ref()).await {
                drop(tx);
                let message = error.to_string();
                parked::resolve(pool, &parked, Resolution::FailedAgain, by, Some(&message)).await?;
                return Err(ParkedError::FailedAgain(error));
            }
            resolve(
                tx,
                &parked,
                Resolution::Applied,
                by,
                halted_on_it.then_some(1),
            )
            .await
        }
    }
}

/// The event at `position` in the log, if it is there.
async fn read_event(
    reader: &LogReader,
    position: i64,
) -> Result<Option<RecordedEvent>, sqlx::Error> {
    let page = reader
        .read(LogCursor::at(position - 1), &LogFilter::default(), 1)
        .await?;
    Ok(page
        .events
        .into_iter()
        .find(|event| event.cursor.position == position))
}

/// Applies the `parked` event (`event`, as read from the log) with `projector` in `conn`'s
/// transaction.
async fn apply(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    parked: &Parked,
    event: Option<&RecordedEvent>,
) -> Result<(), ProjectionError> {
    let event = event.ok_or_else(|| ProjectionError::Malformed {
        position: parked.position,
        event_type: parked.event_type.clone(),
        reason: "the event is no longer in the log".into(),
    })?;
    projector.apply(conn, &[event]).await
}

fn find(projectors: &[Arc<dyn Projector>], name: &str) -> Result<Arc<dyn Projector>, ParkedError> {
    projectors
        .iter()
        .find(|p| p.name() == name)
        .cloned()
        .ok_or_else(|| ParkedError::UnknownProjection(name.to_owned()))
}

/// The log lock for an inline projector (as appends and its runner take it), then its
/// checkpoint; where the checkpoint stands.
async fn lock_like_runner(
    conn: &mut PgConnection,
    projector: &dyn Projector,
) -> Result<LogCursor, sqlx::Error> {
    if super::inline().iter().any(|p| p.name() == projector.name()) {
        lock_log(conn).await?;
    }
    let stored = checkpoint::lock(conn, &[projector.name()]).await?;
    Ok(stored.first().copied().unwrap_or(LogCursor::START))
}

/// The parked event at `position`, locked with the projector's checkpoint (where that
/// stands is returned too), if it is still parked.
async fn lock_parked(
    conn: &mut PgConnection,
    projector: &dyn Projector,
    position: i64,
) -> Result<(Parked, LogCursor), ParkedError> {
    let stored = lock_like_runner(conn, projector).await?;
    let parked = parked::lock(conn, projector.name(), position)
        .await?
        .ok_or_else(|| ParkedError::NotParked(projector.name().to_owned(), position))?;
    if parked.status != ParkedStatus::Parked {
        return Err(ParkedError::Resolved(parked.status));
    }
    Ok((parked, stored))
}

/// Records `resolution` and commits `tx`; when the projector halted on the event (its
/// checkpoint is before it), moves the checkpoint onto it, counting `applied` events, and
/// tells its runner to reload (the notification a rebuild's reset sends). The event as it
/// stands after.
async fn resolve(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    parked: &Parked,
    resolution: Resolution,
    by: &str,
    applied: Option<usize>,
) -> Result<Parked, ParkedError> {
    parked::resolve(&mut *tx, parked, resolution, by, None).await?;
    if let Some(applied) = applied {
        let to = LogCursor::at(parked.position);
        checkpoint::advance(&mut tx, &[(&parked.projection, to, applied)]).await?;
        sqlx::query("SELECT pg_notify('chronicle_resets', $1)")
            .bind(&parked.projection)
            .execute(&mut *tx)
            .await?;
    }
    let resolved = parked::lock(&mut tx, &parked.projection, parked.position).await?;
    tx.commit().await?;
    resolved.ok_or_else(|| ParkedError::NotParked(parked.projection.clone(), parked.position))
}
