//! One step of a runner: the next page of the log, applied by every projector of the set
//! that has events in it, in one transaction with all their checkpoints' moves.

use std::sync::Arc;
use std::time::Instant;

use chronicle_projections::checkpoint::{self, Move};
use chronicle_projections::{type_list, LogCursor, RecordedEvent};

use super::place::{Failed, Place};
use super::{ProjectionRunner, RunnerError};
use crate::log::{LogFilter, Page};
use crate::store::lock_log;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Applied this many events (over all projectors).
    Applied(usize),
    /// Moved on without applying (skipped events, or followed a reset checkpoint).
    Moved,
    /// Nothing new is committed.
    Idle,
    /// An inline set has applied every event of its types, checked under the log lock:
    /// from now on appends apply it, and its runner has nothing to do until a reset. Carries
    /// how many events this step applied on the way.
    Settled(usize),
}

/// Why a step failed: the database, or one projector (the others can go on without it).
pub(super) enum StepError {
    Runner(RunnerError),
    Projector(Box<Failed>),
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

impl<'p> Share<'p> {
    /// Projector `index`'s share: its `events` of the page, up to `to`; only the first while
    /// its `place` looks for the event it fails on.
    fn of(index: usize, mut events: Vec<&'p RecordedEvent>, to: LogCursor, place: &Place) -> Self {
        match events.first() {
            Some(first) if place.isolating() => {
                let to = first.cursor;
                events.truncate(1);
                Self { index, events, to }
            }
            _ => Self { index, events, to },
        }
    }
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
            .map(|&index| {
                let events = self.events_for(index, &page, places[index].read);
                Share::of(index, events, next.max(places[index].read), &places[index])
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
        Ok(match self.apply(places, &due).await? {
            Step::Applied(0) => quiet,
            step @ (Step::Applied(_) | Step::Moved | Step::Idle | Step::Settled(_)) => step,
        })
    }

    /// Applies `due` in one transaction. A projector whose checkpoint had moved (a rebuild,
    /// or appends applying it inline) follows it and applies nothing this time; the others
    /// apply their shares.
    async fn apply(&self, places: &mut [Place], due: &[Share<'_>]) -> Result<Step, StepError> {
        let mut tx = self.pool.begin().await?;
        if self.inline {
            lock_log(&mut tx).await?;
        }
        let names: Vec<&str> = due
            .iter()
            .map(|s| self.projectors[s.index].name())
            .collect();
        let stored = checkpoint::lock(&mut tx, &names).await?;
        let mut kept = Vec::with_capacity(due.len());
        for ((share, stored), name) in due.iter().zip(stored).zip(&names) {
            if stored == places[share.index].stored {
                kept.push((share, *name));
            } else {
                tracing::debug!(projection = name, from = %stored, "checkpoint moved (a rebuild, or appends applying it inline); following it");
                places[share.index] = Place::at(stored);
            }
        }
        if kept.is_empty() {
            return Ok(self.settled_or(&mut tx, Step::Moved).await?);
        }
        for (share, _) in kept.iter().filter(|(s, _)| !s.events.is_empty()) {
            let projector = &self.projectors[share.index];
            projector
                .apply(&mut tx, &share.events)
                .await
                .map_err(|error| {
                    StepError::Projector(Box::new(Failed {
                        index: share.index,
                        error,
                        lone: match share.events.as_slice() {
                            [lone] => Some(Box::new((*lone).clone())),
                            _ => None,
                        },
                        to: share.to,
                    }))
                })?;
        }
        let moves: Vec<Move<'_>> = kept
            .iter()
            .map(|(share, name)| (*name, share.to, share.events.len()))
            .collect();
        checkpoint::advance(&mut tx, &moves).await?;
        let applied = Step::Applied(kept.iter().map(|(s, _)| s.events.len()).sum());
        let step = self.settled_or(&mut tx, applied).await?;
        tx.commit().await?;
        for (share, _) in kept {
            places[share.index].moved_to(share.to);
        }
        Ok(step)
    }

    /// `Settled` when this is an inline set and each of its projectors has applied every
    /// event of its types; otherwise `step`. Only meaningful under the log lock (an inline
    /// set's transactions hold it): no append can commit meanwhile, and every later one
    /// finds the checkpoints caught up and applies the set itself.
    async fn settled_or(
        &self,
        tx: &mut sqlx::PgConnection,
        step: Step,
    ) -> Result<Step, sqlx::Error> {
        if !self.inline {
            return Ok(step);
        }
        let types: Vec<Option<String>> = self
            .projectors
            .iter()
            .map(|p| type_list(p.as_ref()))
            .collect();
        let behind: bool = sqlx::query_scalar(
            "SELECT EXISTS (
                SELECT 1 FROM UNNEST($1::text[], $2::text[]) AS p(name, types)
                  LEFT JOIN projection_checkpoints c ON c.name = p.name
                 WHERE EXISTS (
                       SELECT 1 FROM events e
                        WHERE e.log_position > coalesce(c.log_position, 0)
                          AND (p.types IS NULL
                               OR e.aggregate_type = ANY(string_to_array(p.types, ',')))))",
        )
        .bind(self.names())
        .bind(types)
        .fetch_one(tx)
        .await?;
        Ok(match (behind, step) {
            (true, step) => step,
            (false, Step::Applied(applied)) => Step::Settled(applied),
            (false, _) => Step::Settled(0),
        })
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

    /// For a settled inline set (see [`Step::Settled`]): under the log lock, moves its
    /// checkpoints past the events of other types appended since (so that its lag reads 0),
    /// unless an event of its types is unapplied after all; false then (it must read again).
    pub(super) async fn keep_settled(&self, places: &mut [Place]) -> Result<bool, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        lock_log(&mut tx).await?;
        let names = self.names();
        let stored = checkpoint::lock(&mut tx, &names).await?;
        if stored.is_empty() {
            return Ok(true);
        }
        if !matches!(
            self.settled_or(&mut tx, Step::Moved).await?,
            Step::Settled(_)
        ) {
            for (place, stored) in places.iter_mut().zip(stored) {
                *place = Place::at(stored);
            }
            return Ok(false);
        }
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(log_position), 0) FROM events")
            .fetch_one(&mut *tx)
            .await?;
        let head = LogCursor::at(head);
        let moves: Vec<Move<'_>> = names.iter().map(|name| (*name, head, 0)).collect();
        checkpoint::advance(&mut tx, &moves).await?;
        tx.commit().await?;
        for place in places.iter_mut() {
            *place = Place::at(head);
        }
        Ok(true)
    }
}
