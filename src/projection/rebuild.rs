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
mod load;
mod swap;

use std::sync::Arc;
use std::time::Duration;

use chronicle_projections::rebuilds::{self, Rebuild};
use chronicle_projections::Projector;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use super::leader::Role;
use crate::log::{LogReader, LogWaker};
use copies::Copies;
use load::Run;

/// The role whose holder runs every rebuild.
pub const REBUILD_ROLE: &str = "projections.rebuild";

/// Events per page while loading the copies (the reader also bounds a page's bytes): two
/// pages are in memory at once, one applied and one read, under 200 MB with 500-byte events.
const PAGE: u32 = 5_000;

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
    /// The live tables' definitions changed while the copies were loaded (a migration): the
    /// rebuild starts again with copies of the new shape.
    #[error("the definitions of `{0}`'s tables changed during the rebuild; it starts again")]
    Reshaped(String),
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
    /// Rebuilds `projectors`, reading the log like `reader` and loading the copies, both
    /// over connections of its own made with `options`.
    pub fn new(
        pool: PgPool,
        options: PgConnectOptions,
        reader: &LogReader,
        projectors: Vec<Arc<dyn Projector>>,
    ) -> Self {
        // A page's sorts fit in memory (the default 4 MB spilled pages of 10,000 to disk,
        // 35 ms a page against 61), and each page is planned for its own types and position
        // (a generic plan of the optional filters took 135 ms). One connection, opened
        // while a rebuild reads.
        let reading = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .idle_timeout(crate::db::IDLE_CONNECTION)
            .connect_lazy_with(options.clone().options([
                ("work_mem", "64MB"),
                ("plan_cache_mode", "force_custom_plan"),
            ]));
        Self {
            pool,
            options,
            reader: reader.through(reading),
            projectors,
        }
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn Projector>, RebuildError> {
        self.projectors
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| RebuildError::Unknown(name.to_owned()))
    }

    /// Asks for a rebuild of every projector whose version in code is newer than the one
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
                .any(|(name, version)| name == projector.name() && *version < projector.version());
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
    /// events its copies applied. A rebuild whose live tables changed shape meanwhile starts
    /// again with new copies.
    ///
    /// # Errors
    /// [`RebuildError`]: nothing to run (unknown, not asked for, or at another version),
    /// the projector failing for good, or the database.
    pub async fn rebuild(
        &self,
        name: &str,
        progress: &(dyn Fn(RebuildProgress) + Sync),
    ) -> Result<i64, RebuildError> {
        loop {
            match self.rebuild_once(name, progress).await {
                Err(RebuildError::Reshaped(_)) => {}
                outcome => return outcome,
            }
        }
    }

    async fn rebuild_once(
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
        // A rebuild reads the whole log by type: with statistics older than the log (after
        // a bulk import, before autovacuum's next look) the planner took the types for rare
        // and sorted every later event of them for each page, 358 ms a page instead of 61. Only
        // when a tenth of the log changed since the last look: it takes a second or more.
        let stale: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(n_mod_since_analyze > n_live_tup / 10), true)
               FROM pg_stat_user_tables WHERE relid = 'events'::regclass",
        )
        .fetch_one(&mut conn)
        .await?;
        if stale {
            copies::execute(&mut conn, "ANALYZE events").await?;
        }
        let run = Run {
            projector: projector.as_ref(),
            reader: &self.reader,
            copies: &copies,
            progress,
        };
        let outcome = match run.create_fresh(&mut conn, &rebuild).await {
            Ok(()) => run.to_swap(&mut conn, &mut rebuild).await,
            Err(error) => Err(error),
        };
        let error = match outcome {
            Err(RebuildError::Failed(error)) => error,
            Err(RebuildError::Database(error)) if !transient(&error) => error.to_string(),
            other => return other,
        };
        run.record_failure(&mut conn, &mut rebuild, &error).await?;
        Err(RebuildError::Failed(error))
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

    /// Runs, in turn, each rebuild in progress at this instance's projector versions; one
    /// that stops on a passing error (the database) does not hold up the others.
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
        let mut stopped = Ok(());
        for rebuild in &pending {
            let projection = rebuild.projection.as_str();
            tracing::info!(projection, "rebuilding beside the live tables");
            let quiet = |_: RebuildProgress| {};
            match self.rebuild(projection, &quiet).await {
                Ok(applied) => tracing::info!(projection, applied, "rebuilt and swapped in"),
                Err(RebuildError::Failed(error)) => {
                    tracing::error!(projection, %error, "rebuild failed; the live tables are unchanged");
                }
                Err(RebuildError::Superseded(_)) => {}
                Err(error) => {
                    tracing::warn!(projection, %error, "rebuild stopped; it resumes later");
                    stopped = Err(error);
                }
            }
        }
        stopped
    }
}

/// Calls off the rebuild of projection `name`, or dismisses its failure: the row and the
/// copies go, the live tables stay; a runner loading the copies stops at its next page.
/// `false` when there is no rebuild to call off.
///
/// # Errors
/// Any database error.
pub async fn cancel(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(mut rebuild) = rebuilds::lock(&mut tx, name).await? else {
        return Ok(false);
    };
    if !rebuilds::enter(&mut tx, &mut rebuild, rebuilds::Transition::Cancelled, None).await? {
        return Ok(false);
    }
    let schema = copies::schema(name);
    copies::execute(&mut tx, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    tx.commit().await?;
    Ok(true)
}

/// Whether a database error may pass by itself (the database unreachable, a lock or a
/// deadlock given up on, a cancelled statement): the rebuild then resumes later. Any other
/// (a definition that cannot be copied, a table gone) fails it.
fn transient(error: &sqlx::Error) -> bool {
    let code = error.as_database_error().and_then(|e| e.code());
    crate::command::is_unavailable(error)
        || code.is_some_and(|code| ["55P03", "40P01", "40001", "57014"].contains(&code.as_ref()))
}

/// Holds `rebuild`'s row for the transaction, or fails when it is not this runner's any more.
async fn hold(conn: &mut PgConnection, rebuild: &Rebuild) -> Result<(), RebuildError> {
    if rebuilds::hold(conn, rebuild).await? {
        Ok(())
    } else {
        Err(RebuildError::Superseded(rebuild.projection.clone()))
    }
}
