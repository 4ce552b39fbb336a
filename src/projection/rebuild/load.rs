//! Loading the copies: pages of the log applied to them, their other indexes once they have
//! caught up, then the swap. An event the projector keeps failing on is passed over as its
//! policy (or an admin's skip) allows, or fails the rebuild.

use std::time::Duration;

use chronicle_projections::parked::{self, ParkedStatus};
use chronicle_projections::rebuilds::{self, Rebuild, Transition};
use chronicle_projections::{LogCursor, ProjectionError, Projector, RecordedEvent};
use sqlx::{Connection, PgConnection};

use super::super::runner::backoff;
use super::copies::Copies;
use super::{hold, swap, RebuildError, RebuildProgress, PAGE};
use crate::log::{LogFilter, LogReader};

/// One run of one rebuild.
pub(super) struct Run<'r> {
    pub(super) projector: &'r dyn Projector,
    pub(super) reader: &'r LogReader,
    pub(super) copies: &'r Copies,
    pub(super) progress: &'r (dyn Fn(RebuildProgress) + Sync),
}

impl Run<'_> {
    pub(super) fn filter(&self) -> LogFilter {
        LogFilter {
            aggregate_types: self
                .projector
                .aggregate_types()
                .map(|types| types.iter().map(|&t| t.to_owned()).collect()),
            ..LogFilter::default()
        }
    }

    /// Creates the copies, empty, in a transaction that holds the rebuild, when it has not
    /// loaded anything yet (a rebuild past that point resumes with the copies it has).
    pub(super) async fn create_fresh(
        &self,
        conn: &mut PgConnection,
        rebuild: &Rebuild,
    ) -> Result<(), RebuildError> {
        if rebuild.phase != rebuilds::Phase::Building || rebuild.cursor != LogCursor::START {
            return Ok(());
        }
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        self.copies.create(&mut tx).await?;
        let shape = self.copies.live_shape(&mut tx).await?;
        rebuilds::record_shape(&mut tx, rebuild, &shape).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Loads the copies up to the head, builds their other indexes, and swaps them in.
    pub(super) async fn to_swap(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
    ) -> Result<i64, RebuildError> {
        if rebuild.phase == rebuilds::Phase::Building {
            self.catch_up(conn, rebuild).await?;
            // Indexes build without holding the rebuild's row (it could take minutes, and
            // asking for the rebuild waits on the row); the phase moves after, if the
            // rebuild is still this runner's.
            let mut tx = conn.begin().await?;
            self.copies.finish(&mut tx).await?;
            tx.commit().await?;
            let mut tx = conn.begin().await?;
            hold(&mut tx, rebuild).await?;
            rebuilds::enter(&mut tx, rebuild, Transition::Indexed, None).await?;
            tx.commit().await?;
        }
        let (mut pauses, mut tries) = (swap::busy_pauses(), 0u64);
        loop {
            tries += 1;
            self.catch_up(conn, rebuild).await?;
            match self.swap(conn, rebuild).await {
                Ok(applied) => return Ok(applied),
                Err(RebuildError::Database(error)) if swap::waited_too_long(&error) => {
                    let pause = pauses.next().unwrap_or(Duration::from_secs(5));
                    tracing::info!(
                        projection = rebuild.projection,
                        tries,
                        ?pause,
                        "the live tables are busy; swapping again shortly"
                    );
                    tokio::time::sleep(pause).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Applies the log to the copies, one transaction per page, until a page comes back
    /// short (the head): the next page is read while this one is applied.
    async fn catch_up(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
    ) -> Result<(), RebuildError> {
        let filter = self.filter();
        let mut page = self.reader.read(rebuild.cursor, &filter, PAGE).await?;
        loop {
            let Some(last) = page.events.last().map(|e| e.cursor) else {
                return Ok(());
            };
            let short = page.events.len() < PAGE as usize && !page.truncated;
            // Read (and decode, on another thread) the next page while this one is applied.
            let next = (!short).then(|| {
                let (reader, filter) = (self.reader.clone(), filter.clone());
                tokio::spawn(async move { reader.read(last, &filter, PAGE).await })
            });
            let events: Vec<&RecordedEvent> = page.events.iter().collect();
            let applied = self.apply_page(conn, rebuild, &events).await;
            let next = match next {
                Some(reading) => Some(reading.await.map_err(|_| {
                    RebuildError::Failed("reading the log's next page panicked".to_owned())
                })??),
                None => None,
            };
            applied?;
            (self.progress)(RebuildProgress {
                applied: rebuild.events_applied,
                position: rebuild.cursor.position,
                head: page.head,
            });
            match next {
                Some(next) => page = next,
                None => return Ok(()),
            }
        }
    }

    /// Applies one page to the copies, retrying the projector's own failures as its
    /// policy allows; a page it still fails on fails the rebuild.
    async fn apply_page(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
        events: &[&RecordedEvent],
    ) -> Result<(), RebuildError> {
        let policy = self.projector.failure_policy();
        let retries = policy.attempts.saturating_sub(1) as usize;
        let mut waits = backoff(policy).take(retries);
        loop {
            let error = match self.try_page(conn, rebuild, events).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Rebuild(error)) => return Err(error),
                Err(Attempt::Projector(error)) => error,
            };
            let Some(wait) = waits.next() else {
                return self.apply_one_by_one(conn, rebuild, events).await;
            };
            tracing::warn!(projection = rebuild.projection, %error, ?wait, "a rebuild page failed; trying again");
            tokio::time::sleep(wait).await;
        }
    }

    /// After a page failed every attempt: applies it one event per transaction, passing
    /// over the events the projector fails on (see [`Self::pass_over`]).
    async fn apply_one_by_one(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
        events: &[&RecordedEvent],
    ) -> Result<(), RebuildError> {
        for &event in events {
            match self.try_page(conn, rebuild, &[event]).await {
                Ok(()) => {}
                Err(Attempt::Rebuild(error)) => return Err(error),
                Err(Attempt::Projector(error)) => {
                    self.pass_over(conn, rebuild, event, &error.to_string())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// An event the projector fails on every time: a projector that goes on past failures
    /// parks it (not halting) and the copies move past it, as do those of any projector an
    /// admin skipped it for in the live projection; otherwise the rebuild fails on it.
    async fn pass_over(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
        event: &RecordedEvent,
        error: &str,
    ) -> Result<(), RebuildError> {
        let (name, policy) = (self.projector.name(), self.projector.failure_policy());
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        let parked = parked::lock(&mut tx, name, event.cursor.position).await?;
        let skipped = parked.is_some_and(|p| p.status == ParkedStatus::Skipped);
        if policy.halt && !skipped {
            return Err(RebuildError::Failed(format!(
                "the event at {} ({} {} {}) fails every time: {error}",
                event.cursor, event.aggregate_type, event.aggregate_id, event.event_type
            )));
        }
        if !skipped {
            parked::park(&mut tx, name, event, policy.attempts, error, false).await?;
        }
        let mut moved = rebuild.clone();
        rebuilds::advance(&mut tx, &mut moved, event.cursor, 0).await?;
        tx.commit().await?;
        *rebuild = moved;
        tracing::warn!(projection = name, position = event.cursor.position, skipped, %error, "the rebuild went past an event its projector fails on");
        Ok(())
    }

    /// One attempt at a page: applied to the copies with their checkpoint's move.
    async fn try_page(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
        events: &[&RecordedEvent],
    ) -> Result<(), Attempt> {
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        self.projector
            .apply(&mut tx, events)
            .await
            .map_err(Attempt::of_projector)?;
        let last = events.last().map_or(rebuild.cursor, |e| e.cursor);
        let mut moved = rebuild.clone();
        rebuilds::advance(&mut tx, &mut moved, last, events.len()).await?;
        tx.commit().await?;
        *rebuild = moved;
        Ok(())
    }

    /// Records the rebuild as failed with `error` and drops its copies.
    pub(super) async fn record_failure(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
        error: &str,
    ) -> Result<(), RebuildError> {
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        rebuilds::enter(&mut tx, rebuild, Transition::Failed, Some(error)).await?;
        self.copies.drop(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// A failed attempt at a page: the projector's own (retried, then passed over or fatal) or
/// the rebuild's (the database gone among them: waited out by the rebuild's runner).
#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Projector(ProjectionError),
    #[error(transparent)]
    Rebuild(RebuildError),
}

impl Attempt {
    fn of_projector(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Database(error) if crate::command::is_unavailable(&error) => {
                Self::Rebuild(RebuildError::Database(error))
            }
            error @ (ProjectionError::Database(_) | ProjectionError::Malformed { .. }) => {
                Self::Projector(error)
            }
        }
    }
}

impl From<sqlx::Error> for Attempt {
    fn from(error: sqlx::Error) -> Self {
        Self::Rebuild(RebuildError::Database(error))
    }
}

impl From<RebuildError> for Attempt {
    fn from(error: RebuildError) -> Self {
        Self::Rebuild(error)
    }
}
