//! The loop that feeds a projector pages of the global log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_projections::{checkpoint, LogCursor, ProjectionError, Projector, RecordedEvent};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::leader::Role;
use crate::log::{LogFilter, LogReader, LogWaker, Page, SharedPages};
use crate::store::LOG_LOCK;

/// Timing of a runner.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Events applied per transaction.
    pub page_size: u32,
    /// How long a standby waits before trying to take over again.
    pub standby_retry: Duration,
}

/// Drives one projector on this instance, while this instance holds its leadership.
pub struct ProjectionRunner {
    projector: Arc<dyn Projector>,
    /// The projector is also applied inline by appends: its transactions take the log lock
    /// first, as appends do, so the two never wait on each other in opposite orders.
    inline: bool,
    pool: PgPool,
    reader: LogReader,
    /// Pages shared with the instance's other projectors, when running with them.
    shared: Option<SharedPages>,
    settings: RunnerSettings,
    /// When a filtered projector last recorded moving past events it does not need.
    skipped_at: std::sync::Mutex<Option<Instant>>,
}

/// How long a woken runner lets commits gather before it reads: under load, one page (one
/// transaction) then carries several commits' events instead of one each.
const GATHER: Duration = Duration::from_millis(5);

/// How often a filtered projector records moving past events it does not need: each record
/// is a write, and until it is made the skipped events are only re-read after a restart.
const SKIP_EVERY: Duration = Duration::from_secs(1);

/// Why a projector stopped applying pages.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The projector failed on a page.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// This instance lost the projector's role.
    #[error("the projector's role was lost")]
    RoleLost,
}

/// Where a runner stands: its stored checkpoint, and how far it has read (past events it does
/// not need, the read position runs ahead of the checkpoint).
#[derive(Debug, Clone, Copy)]
struct Position {
    stored: LogCursor,
    read: LogCursor,
}

impl Position {
    fn at(cursor: LogCursor) -> Self {
        Self {
            stored: cursor,
            read: cursor,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Applied this many events.
    Applied(usize),
    /// Moved on without applying (skipped events, or followed a reset checkpoint).
    Moved,
    /// Nothing new is committed.
    Idle,
}

/// What [`ProjectionRunner::rebuild`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// This process held the projector and applied this many events from the start.
    Completed(usize),
    /// Another instance runs the projector: its tables and checkpoint were reset, and that
    /// instance is applying the log from the start.
    HandedOver,
}

impl ProjectionRunner {
    /// A runner for `projector`.
    pub fn new(
        projector: Arc<dyn Projector>,
        pool: PgPool,
        reader: LogReader,
        settings: RunnerSettings,
    ) -> Self {
        let inline = super::inline().iter().any(|p| p.name() == projector.name());
        Self {
            projector,
            inline,
            pool,
            reader,
            shared: None,
            settings,
            skipped_at: std::sync::Mutex::new(None),
        }
    }

    /// The same runner reading through `shared`, the pages this instance's projectors share.
    #[must_use]
    pub fn sharing(mut self, shared: SharedPages) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The role that lets an instance run `projector`.
    pub fn role_name(&self) -> String {
        format!("projection.{}", self.projector.name())
    }

    /// Runs until `shutdown`: standby until `role` is won, then apply the log as it grows.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        let name = self.projector.name();
        let pause = self.settings.standby_retry;
        role.lead_while_held(pause, &shutdown, |role| async {
            tracing::info!(projection = name, "projector active on this instance");
            if let Err(error) = self.lead(role, &waker, &shutdown).await {
                tracing::warn!(projection = name, %error, "projector stopped; will retry");
            }
        })
        .await;
    }

    async fn lead(
        &self,
        mut role: Role,
        waker: &LogWaker,
        shutdown: &CancellationToken,
    ) -> Result<(), RunnerError> {
        let mut waiter = waker.waiter();
        let name = self.projector.name();
        let mut position =
            Position::at(checkpoint::load(&mut *self.pool.acquire().await?, name).await?);
        let mut resets = waker.resets();
        let mut reset = false;
        while !shutdown.is_cancelled() && role.is_held() {
            // A rebuild reset the checkpoint while the log was quiet (a page applied notices
            // a reset by itself: it compares the locked checkpoint).
            if std::mem::take(&mut reset) {
                let stored = checkpoint::load(&mut *self.pool.acquire().await?, name).await?;
                if stored != position.stored {
                    position = Position::at(stored);
                }
            }
            if self.step(&mut position).await? != Step::Idle {
                continue;
            }
            // Events read past but not recorded as skipped are recorded within SKIP_EVERY,
            // so that a quiet log leaves every checkpoint at its head.
            let skip = (position.read != position.stored)
                .then(|| tokio::time::Instant::now() + SKIP_EVERY);
            tokio::select! {
                () = waiter.wait_until(skip) => tokio::time::sleep(GATHER).await,
                Ok(()) = resets.changed() => reset = true,
                () = role.lost() => {}
                () = shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// The page after `after` (the shared unfiltered one when running with the instance's
    /// other projectors, else one filtered by the database) and where reading continues.
    async fn next_page(&self, after: LogCursor) -> Result<(Arc<Page>, LogCursor), RunnerError> {
        let limit = self.settings.page_size;
        let page = match &self.shared {
            Some(shared) => shared.read(after, limit).await?,
            None => {
                let types = self.projector.aggregate_types();
                let filter = LogFilter {
                    aggregate_types: types
                        .map(|types| types.iter().map(|t| (*t).to_owned()).collect()),
                    ..LogFilter::default()
                };
                Arc::new(self.reader.read(after, &filter, limit).await?)
            }
        };
        let next = page.next_cursor(after);
        Ok((page, next))
    }

    /// Applies the next page in one transaction with the checkpoint's move. Pages without
    /// events for this projector only move its read position; the checkpoint follows at most
    /// every [`SKIP_EVERY`] (a skip is a write, and skipped events are harmless to re-read).
    ///
    /// If a rebuild reset the checkpoint meanwhile, nothing is applied and the runner
    /// continues from the stored checkpoint.
    async fn step(&self, position: &mut Position) -> Result<Step, RunnerError> {
        let (page, next) = self.next_page(position.read).await?;
        let types = self.projector.aggregate_types();
        let events: Vec<&RecordedEvent> = page
            .events
            .iter()
            .filter(|e| types.is_none_or(|types| types.contains(&e.aggregate_type.as_str())))
            .collect();
        // An empty page means nothing new is committed: waiting is right. A page of events
        // this projector does not need is progress: more may follow at once.
        let quiet = if page.events.is_empty() {
            Step::Idle
        } else {
            Step::Moved
        };
        if events.is_empty() {
            position.read = next;
            if position.stored == next || !self.skip_due() {
                return Ok(quiet);
            }
        }
        let name = self.projector.name();
        let mut tx = self.pool.begin().await?;
        if self.inline {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(LOG_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        let stored = checkpoint::lock(&mut tx, name).await?;
        if stored != position.stored {
            tracing::debug!(projection = name, from = %stored, "checkpoint moved (a rebuild, or appends applying it inline); following it");
            *position = Position::at(stored);
            return Ok(Step::Moved);
        }
        if !events.is_empty() {
            self.projector.apply(&mut tx, &events).await?;
        }
        checkpoint::advance(&mut tx, name, next, events.len()).await?;
        tx.commit().await?;
        *position = Position::at(next);
        Ok(if events.is_empty() {
            quiet
        } else {
            Step::Applied(events.len())
        })
    }

    /// True (and noted) when a filtered projector may record a skip now.
    fn skip_due(&self) -> bool {
        let Ok(mut last) = self.skipped_at.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SKIP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Rebuilds the projector from the start of the log.
    ///
    /// Resets its tables and checkpoint in one transaction. If this process holds `role` (no
    /// instance runs the projector), it applies the whole log before returning; otherwise
    /// the instance that runs it notices the reset and rebuilds while serving.
    ///
    /// # Errors
    /// A database or projection error; [`RunnerError::RoleLost`] when the role is lost
    /// half-way (the instance that takes it over finishes the rebuild).
    pub async fn rebuild(&self, role: &Role) -> Result<Rebuild, RunnerError> {
        let name = self.projector.name();
        let mut tx = self.pool.begin().await?;
        checkpoint::lock(&mut tx, name).await?;
        self.projector.reset(&mut tx).await?;
        checkpoint::reset(&mut tx, name).await?;
        tx.commit().await?;
        if !role.is_held() {
            return Ok(Rebuild::HandedOver);
        }
        let mut position = Position::at(LogCursor::START);
        let mut total = 0;
        loop {
            if !role.is_held() {
                return Err(RunnerError::RoleLost);
            }
            match self.step(&mut position).await? {
                Step::Applied(applied) => total += applied,
                Step::Moved => {}
                Step::Idle => return Ok(Rebuild::Completed(total)),
            }
        }
    }
}
