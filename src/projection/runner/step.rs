//! One step of a runner: the next page of the log, applied by every projector of the set
//! that has events in it, in one transaction with all their checkpoints' moves.

use std::sync::Arc;
use std::time::Instant;

use chronicle_projections::checkpoint::{self, Move};
use chronicle_projections::{LogCursor, ProjectionError, RecordedEvent};

use super::{ProjectionRunner, RunnerError};
use crate::log::{LogFilter, Page};
use crate::store::LOG_LOCK;

/// Where one projector of a runner stands: its stored checkpoint, how far it has read (past
/// events it does not need, the read position runs ahead of the checkpoint), and until when
/// it is paused after failing on a page.
#[derive(Debug, Clone, Copy)]
pub(super) struct Place {
    pub(super) stored: LogCursor,
    pub(super) read: LogCursor,
    pub(super) paused_until: Option<Instant>,
}

impl Place {
    pub(super) fn at(cursor: LogCursor) -> Self {
        Self {
            stored: cursor,
            read: cursor,
            paused_until: None,
        }
    }

    /// Whether the projector takes part now (a pause that has run out ends).
    fn resume(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
        self.paused_until.is_none()
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Applied this many events (over all projectors).
    Applied(usize),
    /// Moved on without applying (skipped events, or followed a reset checkpoint).
    Moved,
    /// Nothing new is committed.
    Idle,
}

/// Why a step failed: the database, or one projector (the others can go on without it).
pub(super) enum StepError {
    Runner(RunnerError),
    Projector(usize, ProjectionError),
}

impl From<sqlx::Error> for StepError {
    fn from(error: sqlx::Error) -> Self {
        Self::Runner(RunnerError::Database(error))
    }
}

/// A projector's share of a page: its index, its events, and where its checkpoint moves.
struct Share<'p> {
    index: usize,
    events: Vec<&'p RecordedEvent>,
    to: LogCursor,
}

impl ProjectionRunner {
    /// Reads the page after the active projectors' lowest read position and applies it.
    /// Projectors without events in it only move their read position; their checkpoints
    /// follow at most every [`super::SKIP_EVERY`] (a skip is a write, and skipped events are
    /// harmless to re-read).
    ///
    /// If a rebuild reset a checkpoint meanwhile, nothing is applied and that projector
    /// continues from its stored checkpoint.
    pub(super) async fn step(&self, places: &mut [Place]) -> Result<Step, StepError> {
        let now = Instant::now();
        let active: Vec<usize> = (0..places.len())
            .filter(|&i| places[i].resume(now))
            .collect();
        let Some(from) = active.iter().map(|&i| places[i].read).min() else {
            return Ok(Step::Idle);
        };
        let (page, next) = self.next_page(from).await.map_err(StepError::Runner)?;
        // An empty page means nothing new is committed: waiting is right. A page of events
        // no projector needs is progress: more may follow at once.
        let quiet = if page.events.is_empty() {
            Step::Idle
        } else {
            Step::Moved
        };
        let shares: Vec<Share<'_>> = active
            .iter()
            .map(|&index| Share {
                index,
                events: self.events_for(index, &page, places[index].read),
                to: next.max(places[index].read),
            })
            .collect();
        let skips = shares
            .iter()
            .any(|s| s.events.is_empty() && places[s.index].stored != s.to);
        let record_skips = skips && self.skip_due();
        let (due, idle): (Vec<Share<'_>>, Vec<Share<'_>>) = shares.into_iter().partition(|s| {
            !s.events.is_empty() || (record_skips && places[s.index].stored != s.to)
        });
        for share in idle {
            places[share.index].read = share.to;
        }
        if due.is_empty() {
            return Ok(quiet);
        }
        let applied = self.apply(places, &due).await?;
        Ok(if applied == 0 {
            quiet
        } else {
            Step::Applied(applied)
        })
    }

    /// Applies `due` in one transaction; the number of events applied, or 0 when a
    /// checkpoint had moved (its projector then follows it, and nothing is applied).
    async fn apply(&self, places: &mut [Place], due: &[Share<'_>]) -> Result<usize, StepError> {
        let mut tx = self.pool.begin().await?;
        if self.inline {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOG_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let names: Vec<&str> = due
            .iter()
            .map(|s| self.projectors[s.index].name())
            .collect();
        let stored = checkpoint::lock(&mut tx, &names).await?;
        let mut moved = false;
        for ((share, stored), name) in due.iter().zip(stored).zip(&names) {
            if stored != places[share.index].stored {
                tracing::debug!(projection = name, from = %stored, "checkpoint moved (a rebuild, or appends applying it inline); following it");
                places[share.index] = Place::at(stored);
                moved = true;
            }
        }
        if moved {
            return Ok(0);
        }
        for share in due.iter().filter(|s| !s.events.is_empty()) {
            let projector = &self.projectors[share.index];
            projector
                .apply(&mut tx, &share.events)
                .await
                .map_err(|error| StepError::Projector(share.index, error))?;
        }
        let moves: Vec<Move<'_>> = due
            .iter()
            .zip(&names)
            .map(|(share, name)| (*name, share.to, share.events.len()))
            .collect();
        checkpoint::advance(&mut tx, &moves).await?;
        tx.commit().await?;
        for share in due {
            places[share.index] = Place::at(share.to);
        }
        Ok(due.iter().map(|s| s.events.len()).sum())
    }

    /// The events of `page` after `read` that projector `index` reads.
    fn events_for<'p>(
        &self,
        index: usize,
        page: &'p Page,
        read: LogCursor,
    ) -> Vec<&'p RecordedEvent> {
        let types = self.projectors[index].aggregate_types();
        page.events
            .iter()
            .filter(|e| e.cursor > read)
            .filter(|e| types.is_none_or(|types| types.contains(&e.aggregate_type.as_str())))
            .collect()
    }

    /// The page after `after` (the shared unfiltered one when running with the instance's
    /// other runners, else one filtered by the database to the set's types) and where
    /// reading continues.
    async fn next_page(&self, after: LogCursor) -> Result<(Arc<Page>, LogCursor), RunnerError> {
        let limit = self.settings.page_size;
        let page = match &self.shared {
            Some(shared) => shared.read(after, limit).await?,
            None => {
                let filter = LogFilter {
                    aggregate_types: self.aggregate_types(),
                    ..LogFilter::default()
                };
                Arc::new(self.reader.read(after, &filter, limit).await?)
            }
        };
        let next = page.next_cursor(after);
        Ok((page, next))
    }

    /// Every aggregate type the set's projectors read; `None` when one reads them all.
    fn aggregate_types(&self) -> Option<Vec<String>> {
        let mut types = Vec::new();
        for projector in &self.projectors {
            types.extend(projector.aggregate_types()?.iter().map(|t| (*t).to_owned()));
        }
        types.sort();
        types.dedup();
        Some(types)
    }
}
