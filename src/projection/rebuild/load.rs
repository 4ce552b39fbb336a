//! Loading the copies: pages of the log applied to them, their other indexes once they have
//! caught up, then the swap; a projector that keeps failing fails the rebuild.

use backon::{BackoffBuilder, ExponentialBuilder};
use chronicle_projections::rebuilds::{self, Rebuild, Transition};
use chronicle_projections::{ProjectionError, Projector, RecordedEvent};
use sqlx::{Connection, PgConnection};

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

    /// Creates the copies, empty, in a transaction that holds the rebuild.
    pub(super) async fn create_copies(
        &self,
        conn: &mut PgConnection,
        rebuild: &Rebuild,
    ) -> Result<(), RebuildError> {
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        self.copies.create(&mut tx).await?;
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
            let mut tx = conn.begin().await?;
            hold(&mut tx, rebuild).await?;
            self.copies.finish(&mut tx).await?;
            rebuilds::enter(&mut tx, rebuild, Transition::Indexed, None).await?;
            tx.commit().await?;
        }
        loop {
            self.catch_up(conn, rebuild).await?;
            match self.swap(conn, rebuild).await {
                Ok(applied) => return Ok(applied),
                Err(RebuildError::Database(error)) if swap::waited_too_long(&error) => {
                    tracing::info!(
                        projection = rebuild.projection,
                        "the live tables are busy; swapping again shortly"
                    );
                    tokio::time::sleep(swap::BUSY_PAUSE).await;
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
        let mut waits = ExponentialBuilder::default()
            .with_min_delay(policy.first_wait)
            .with_max_delay(policy.max_wait)
            .with_max_times(policy.attempts.saturating_sub(1) as usize)
            .build();
        loop {
            let error = match self.try_page(conn, rebuild, events).await {
                Ok(()) => return Ok(()),
                Err(Attempt::Rebuild(error)) => return Err(error),
                Err(Attempt::Projector(ProjectionError::Database(error)))
                    if crate::command::is_unavailable(&error) =>
                {
                    return Err(RebuildError::Database(error))
                }
                Err(Attempt::Projector(error)) => error,
            };
            let Some(wait) = waits.next() else {
                return Err(RebuildError::Failed(error.to_string()));
            };
            tracing::warn!(projection = rebuild.projection, %error, ?wait, "a rebuild page failed; trying again");
            tokio::time::sleep(wait).await;
        }
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
            .map_err(Attempt::Projector)?;
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

/// A failed attempt at a page: the projector's (retried unless the database is gone) or
/// the rebuild's.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Projector(ProjectionError),
    #[error(transparent)]
    Rebuild(RebuildError),
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
