//! The loop that feeds a projector pages of the global log.

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::{checkpoint, LogCursor, ProjectionError, Projector};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::leader::Leadership;
use crate::log::{LogFilter, LogReader, LogWaker};

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
    pool: PgPool,
    options: PgConnectOptions,
    reader: LogReader,
    settings: RunnerSettings,
    /// When a filtered projector last recorded moving past events it does not need.
    skipped_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a filtered projector records moving past events it does not need: each record
/// is a write, and until it is made the skipped events are only re-read (filtered in SQL).
const SKIP_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Why a projector stopped applying pages.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// The projector failed on a page.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
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
    /// A runner for `projector`; `options` opens its leadership connection.
    pub fn new(
        projector: Arc<dyn Projector>,
        pool: PgPool,
        options: PgConnectOptions,
        reader: LogReader,
        settings: RunnerSettings,
    ) -> Self {
        Self {
            projector,
            pool,
            options,
            reader,
            settings,
            skipped_at: std::sync::Mutex::new(None),
        }
    }

    /// Runs until `shutdown`: standby until leadership is won, then apply the log as it grows.
    pub async fn run(self, waker: LogWaker, shutdown: CancellationToken) {
        let name = self.projector.name();
        while !shutdown.is_cancelled() {
            match Leadership::try_claim(&self.options, &format!("projection.{name}")).await {
                Ok(Some(leadership)) => {
                    tracing::info!(projection = name, "projector active on this instance");
                    if let Err(error) = self.lead(leadership, &waker, &shutdown).await {
                        tracing::warn!(projection = name, %error, "projector stopped; will retry");
                    }
                }
                Ok(None) => tracing::debug!(projection = name, "projector runs elsewhere"),
                Err(error) => tracing::warn!(projection = name, %error, "cannot claim projector"),
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.standby_retry) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn lead(
        &self,
        mut leadership: Leadership,
        waker: &LogWaker,
        shutdown: &CancellationToken,
    ) -> Result<(), RunnerError> {
        let mut waiter = waker.waiter();
        let name = self.projector.name();
        let mut cursor = checkpoint::load(&mut *self.pool.acquire().await?, name).await?;
        while !shutdown.is_cancelled() {
            leadership.confirm().await?;
            let (next, applied) = self.step(cursor).await?;
            cursor = next;
            if applied == 0 {
                tokio::select! {
                    () = waiter.wait() => {}
                    () = shutdown.cancelled() => {}
                }
                // A rebuild may have reset the checkpoint while the log was quiet.
                cursor = checkpoint::load(&mut *self.pool.acquire().await?, name).await?;
            }
        }
        Ok(())
    }

    /// Applies the page after the checkpoint in one transaction with the checkpoint's move.
    ///
    /// `expected` is where this runner believes the checkpoint is; if a rebuild reset it
    /// meanwhile, the page is skipped and the runner continues from the stored checkpoint.
    async fn step(&self, expected: LogCursor) -> Result<(LogCursor, usize), RunnerError> {
        let types = self.projector.aggregate_types();
        let filter = LogFilter {
            aggregate_types: types.map(|types| types.iter().map(|t| (*t).to_owned()).collect()),
            ..LogFilter::default()
        };
        let page = self
            .reader
            .read(expected, &filter, self.settings.page_size)
            .await?;
        // A filtered projector also moves past the settled events it does not need, so its
        // lag reaches zero and later reads do not rescan them.
        let next = match (page.events.last(), types) {
            (Some(last), _) => last.cursor,
            (None, Some(_)) if self.skip_due() => page.next_cursor(expected),
            (None, Some(_) | None) => expected,
        };
        if next == expected {
            return Ok((expected, 0));
        }
        let name = self.projector.name();
        let mut tx = self.pool.begin().await?;
        let stored = checkpoint::lock(&mut tx, name).await?;
        if stored != expected {
            tracing::info!(projection = name, from = %stored, "checkpoint moved (rebuild); following it");
            return Ok((stored, 0));
        }
        if !page.events.is_empty() {
            self.projector.apply(&mut tx, &page.events).await?;
        }
        checkpoint::advance(&mut tx, name, next, page.events.len()).await?;
        tx.commit().await?;
        Ok((next, page.events.len()))
    }

    /// True (and noted) when a filtered projector may record a skip now.
    fn skip_due(&self) -> bool {
        let Ok(mut last) = self.skipped_at.lock() else {
            return false;
        };
        let now = std::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < SKIP_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// Rebuilds the projector from the start of the log.
    ///
    /// Resets its tables and checkpoint in one transaction. If no instance runs the projector,
    /// this process claims it and applies the whole log before returning; otherwise the
    /// instance that runs it notices the reset and rebuilds while serving.
    ///
    /// # Errors
    /// A database or projection error.
    pub async fn rebuild(&self) -> Result<Rebuild, RunnerError> {
        let name = self.projector.name();
        let leadership =
            Leadership::try_claim(&self.options, &format!("projection.{name}")).await?;
        let mut tx = self.pool.begin().await?;
        checkpoint::lock(&mut tx, name).await?;
        self.projector.reset(&mut tx).await?;
        checkpoint::reset(&mut tx, name).await?;
        tx.commit().await?;
        let Some(mut leadership) = leadership else {
            return Ok(Rebuild::HandedOver);
        };
        let mut cursor = LogCursor::START;
        let mut total = 0;
        loop {
            leadership.confirm().await?;
            let (next, applied) = self.step(cursor).await?;
            if applied == 0 {
                return Ok(Rebuild::Completed(total));
            }
            cursor = next;
            total += applied;
        }
    }
}
