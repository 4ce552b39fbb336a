//! Rebuilding a projection beside the live one (blue/green): its tables are copied empty
//! into their own schema (see [`copies`]), loaded from the log in large pages on a
//! connection of their own while the live tables keep answering and keep up, given their
//! other indexes once they have caught up, and swapped in atomically when they are at the
//! head. The live tables are never emptied or written by a rebuild: a rebuild that fails,
//! or a process killed half-way, leaves them as they were; the next run of the rebuild
//! resumes from the copies' own checkpoint (`projection_rebuilds`).
//!
//! One instance at a time runs rebuilds (the role `projections.rebuild`); and every page
//! checks that the rebuild's row still stands where this runner left it, so two runners
//! can never both load the same copies.

mod copies;
mod swap;

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chronicle_projections::rebuilds::{self, Rebuild, Transition};
use chronicle_projections::{LogCursor, ProjectionError, Projector, RecordedEvent};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::leader::Role;
use crate::log::{LogFilter, LogReader, LogWaker};
use copies::Copies;

/// The role whose holder runs every rebuild.
pub const REBUILD_ROLE: &str = "projections.rebuild";

/// Events per page while loading the copies (the reader also bounds a page's bytes).
const PAGE: u32 = 10_000;

/// How a rebuild has come along, after each page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events the copies applied.
    pub applied: i64,
    /// The log position they applied up to.
    pub position: i64,
    /// The log's last position when the page was read.
    pub head: i64,
}

/// Why a rebuild stopped before its swap.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    /// No projector has this name.
    #[error("no projection `{0}`")]
    Unknown(String),
    /// The rebuild's row changed under this runner: restarted, superseded, swapped in or
    /// failed elsewhere.
    #[error("the rebuild of `{0}` is not this runner's any more (restarted, finished or failed elsewhere)")]
    Superseded(String),
    /// The projector failed on the log every time its policy allows; the rebuild is
    /// recorded as failed and its copies dropped.
    #[error("the rebuild failed: {0}")]
    Failed(String),
    /// The database failed (the rebuild resumes later).
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Runs rebuilds of the projectors it knows.
#[derive(Clone)]
pub struct Rebuilder {
    pool: PgPool,
    options: PgConnectOptions,
    reader: LogReader,
    projectors: Vec<Arc<dyn Projector>>,
}

impl Rebuilder {
    /// Rebuilds `projectors`, reading the log with `reader` and loading the copies over
    /// connections made with `options`.
    pub fn new(
        pool: PgPool,
        options: PgConnectOptions,
        reader: LogReader,
        projectors: Vec<Arc<dyn Projector>>,
    ) -> Self {
        Self {
            pool,
            options,
            reader,
            projectors,
        }
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn Projector>, RebuildError> {
        self.projectors
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| RebuildError::Unknown(name.to_owned()))
    }

    /// Asks for a rebuild of every projector whose version in code differs from the one
    /// that built its live tables; returns their names.
    ///
    /// # Errors
    /// Any database error.
    pub async fn request_changed(&self) -> Result<Vec<String>, sqlx::Error> {
        let stored: Vec<(String, i32)> =
            sqlx::query_as("SELECT name, version FROM projection_checkpoints")
                .fetch_all(&self.pool)
                .await?;
        let mut asked = Vec::new();
        for projector in &self.projectors {
            let changed = stored
                .iter()
                .any(|(name, version)| name == projector.name() && *version != projector.version());
            if changed {
                rebuilds::request(
                    &self.pool,
                    projector.name(),
                    projector.version(),
                    "start-up",
                )
                .await?;
                asked.push(projector.name().to_owned());
            }
        }
        Ok(asked)
    }

    /// Runs the rebuild of `name` to its swap, telling `progress` after each page; the
    /// events its copies applied.
    ///
    /// # Errors
    /// [`RebuildError`]: nothing to run (unknown, not asked for, or at another version),
    /// the projector failing for good, or the database.
    pub async fn rebuild(
        &self,
        name: &str,
        progress: &(dyn Fn(RebuildProgress) + Sync),
    ) -> Result<i64, RebuildError> {
        let projector = self.find(name)?.clone();
        let mut rebuild = rebuilds::load(&self.pool, name)
            .await?
            .filter(|r| r.phase.running() && r.version == projector.version())
            .ok_or_else(|| RebuildError::Superseded(name.to_owned()))?;
        let copies = Copies::new(name, projector.tables(), projector.apply_indexes());
        let mut conn = self.connect(name).await?;
        let run = Run {
            projector: projector.as_ref(),
            reader: &self.reader,
            copies: &copies,
            progress,
        };
        if rebuild.cursor == LogCursor::START {
            run.create_copies(&mut conn, &rebuild).await?;
        }
        let outcome = run.to_swap(&mut conn, &mut rebuild).await;
        if let Err(RebuildError::Failed(error)) = &outcome {
            run.record_failure(&mut conn, &mut rebuild, error).await?;
        }
        outcome
    }

    /// A connection of its own for loading `name`'s copies: their schema first on its path,
    /// and commits that do not wait for the disk (a page lost in a crash is lost with the
    /// checkpoint that counted it, and loaded again).
    async fn connect(&self, name: &str) -> Result<PgConnection, sqlx::Error> {
        let path = format!("{},public,analytics", copies::schema(name));
        let options = self.options.clone().options([
            ("search_path", path.as_str()),
            ("synchronous_commit", "off"),
        ]);
        PgConnection::connect_with(&options).await
    }

    /// While this instance holds `role`: runs every rebuild asked for, again when one is
    /// asked for, and after `pause` when a run failed, until `shutdown`.
    pub async fn run(
        self,
        role: Role,
        waker: LogWaker,
        pause: Duration,
        shutdown: CancellationToken,
    ) {
        role.lead_while_held(pause, &shutdown, |role| async {
            self.lead(role, &waker, pause, &shutdown).await;
        })
        .await;
    }

    async fn lead(
        &self,
        mut role: Role,
        waker: &LogWaker,
        pause: Duration,
        shutdown: &CancellationToken,
    ) {
        let mut asked = waker.resets();
        while role.is_held() && !shutdown.is_cancelled() {
            let pending = tokio::select! {
                pending = self.run_pending() => pending,
                () = role.lost() => return,
                () = shutdown.cancelled() => return,
            };
            let wait = match pending {
                Ok(()) => waker.poll_every(),
                Err(error) => {
                    tracing::warn!(%error, "a rebuild stopped; trying again later");
                    pause
                }
            };
            tokio::select! {
                Ok(()) = asked.changed() => {}
                () = tokio::time::sleep(wait) => {}
                () = role.lost() => return,
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Runs, in turn, each rebuild in progress at this instance's projector versions.
    async fn run_pending(&self) -> Result<(), RebuildError> {
        let mut pending: Vec<Rebuild> = rebuilds::all(&self.pool).await?;
        // Only running ones, at this instance's versions (an older instance leaves a newer
        // version's rebuild alone).
        pending.retain(|rebuild| {
            rebuild.phase.running()
                && self
                    .projectors
                    .iter()
                    .any(|p| p.name() == rebuild.projection && p.version() == rebuild.version)
        });
        for rebuild in &pending {
            tracing::info!(
                projection = rebuild.projection,
                "rebuilding beside the live tables"
            );
            let quiet = |_: RebuildProgress| {};
            match self.rebuild(&rebuild.projection, &quiet).await {
                Ok(applied) => tracing::info!(
                    projection = rebuild.projection,
                    applied,
                    "rebuilt and swapped in"
                ),
                Err(RebuildError::Failed(error)) => {
                    tracing::error!(projection = rebuild.projection, %error, "rebuild failed; the live tables are unchanged");
                }
                Err(RebuildError::Superseded(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// One run of one rebuild.
struct Run<'r> {
    projector: &'r dyn Projector,
    reader: &'r LogReader,
    copies: &'r Copies,
    progress: &'r (dyn Fn(RebuildProgress) + Sync),
}

impl Run<'_> {
    fn filter(&self) -> LogFilter {
        LogFilter {
            aggregate_types: self
                .projector
                .aggregate_types()
                .map(|types| types.iter().map(|&t| t.to_owned()).collect()),
            ..LogFilter::default()
        }
    }

    /// Creates the copies, empty, in a transaction that holds the rebuild.
    async fn create_copies(
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
    async fn to_swap(
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
            let next = async {
                if short {
                    Ok(None)
                } else {
                    self.reader.read(last, &filter, PAGE).await.map(Some)
                }
            };
            let events: Vec<&RecordedEvent> = page.events.iter().collect();
            let (applied, next) = tokio::join!(self.apply_page(conn, rebuild, &events), next);
            applied?;
            (self.progress)(RebuildProgress {
                applied: rebuild.events_applied,
                position: rebuild.cursor.position,
                head: page.head,
            });
            match next? {
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
    async fn record_failure(
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

/// Holds `rebuild`'s row for the transaction, or fails when it is not this runner's any more.
async fn hold(conn: &mut PgConnection, rebuild: &Rebuild) -> Result<(), RebuildError> {
    if rebuilds::hold(conn, rebuild).await? {
        Ok(())
    } else {
        Err(RebuildError::Superseded(rebuild.projection.clone()))
    }
}
