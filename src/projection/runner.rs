//! The loop that feeds a set of projectors pages of the global log, one transaction per page
//! for all of them (see [`super::sets`]).

mod place;
mod step;

pub(super) use place::backoff;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chronicle_projections::{checkpoint, parked, ProjectionError, Projector};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::leader::Role;
use super::ProjectorSet;
use crate::log::{LogReader, LogWaker, SharedPages};
use place::Place;
use step::{Step, StepError};

/// Timing of a runner.
#[derive(Debug, Clone, Copy)]
pub struct RunnerSettings {
    /// Events read per page (one transaction).
    pub page_size: u32,
    /// How long a standby waits before trying to take over again, and a projector that
    /// failed on a page before it tries again.
    pub standby_retry: Duration,
}

/// Drives a set of projectors on this instance, while this instance holds the set's role.
pub struct ProjectionRunner {
    role: String,
    projectors: Vec<Arc<dyn Projector>>,
    /// The set is an inline projector: its transactions take the log lock first, as appends
    /// do, so the two never wait on each other in opposite orders.
    inline: bool,
    /// How long a woken runner lets commits gather before it reads (see [`ProjectorSet`]).
    gather: Duration,
    pool: PgPool,
    reader: LogReader,
    /// Pages shared with the instance's other runners, when running with them.
    shared: Option<SharedPages>,
    settings: RunnerSettings,
    /// When the set last recorded moving past events its projectors do not need.
    skipped_at: std::sync::Mutex<Option<Instant>>,
}

/// How often a runner records its projectors moving past events they do not need: each
/// record is a write, and until it is made the skipped events are only re-read after a
/// restart.
const SKIP_EVERY: Duration = Duration::from_secs(1);

/// Why a runner stopped applying pages.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// A projector failed on a page.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl ProjectionRunner {
    /// A runner for `set`.
    pub fn new(
        set: ProjectorSet,
        pool: PgPool,
        reader: LogReader,
        settings: RunnerSettings,
    ) -> Self {
        let ProjectorSet {
            role,
            projectors,
            gather,
        } = set;
        let inline = projectors
            .iter()
            .any(|p| super::inline().iter().any(|i| i.name() == p.name()));
        Self {
            role,
            projectors,
            inline,
            gather,
            pool,
            reader,
            shared: None,
            settings,
            skipped_at: std::sync::Mutex::new(None),
        }
    }

    /// The same runner reading through `shared`, the pages this instance's runners share.
    #[must_use]
    pub fn sharing(mut self, shared: SharedPages) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The role that lets an instance run the set.
    pub fn role_name(&self) -> String {
        self.role.clone()
    }

    fn names(&self) -> Vec<&'static str> {
        self.projectors.iter().map(|p| p.name()).collect()
    }

    /// Runs until `shutdown`: standby until `role` is won, then apply the log as it grows.
    pub async fn run(self, role: Role, waker: LogWaker, shutdown: CancellationToken) {
        let names = self.names().join(", ");
        let pause = self.settings.standby_retry;
        role.lead_while_held(pause, &shutdown, |role| async {
            tracing::info!(projections = names, "projectors active on this instance");
            if let Err(error) = self.lead(role, &waker, &shutdown).await {
                tracing::warn!(projections = names, %error, "projectors stopped; will retry");
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
        let mut places = self.stored_places().await?;
        let mut resets = waker.resets();
        let mut reset = false;
        // An inline set that caught up is applied by appends (see `Step::Settled`): it only
        // records skips, at most every SKIP_EVERY, until it falls behind or is reset.
        let mut settled = false;
        let mut recorded_at = waker.generation().wrapping_sub(1);
        while !shutdown.is_cancelled() && role.is_held() {
            // A rebuild reset a checkpoint while the log was quiet (a page applied notices
            // a reset by itself: it compares the locked checkpoints).
            if std::mem::take(&mut reset) {
                for (place, stored) in places.iter_mut().zip(self.stored_places().await?) {
                    place.reload(stored);
                }
            }
            if settled {
                // Woken by appends (which applied the set themselves): record the skips. The
                // fallback poll of an idle log finds nothing appended and writes nothing.
                if waker.generation() != recorded_at {
                    recorded_at = waker.generation();
                    settled = self.keep_settled(&mut places).await?;
                    if !settled {
                        continue;
                    }
                }
                tokio::select! {
                    () = async {
                        waiter.wait().await;
                        tokio::time::sleep(SKIP_EVERY).await;
                    } => {}
                    Ok(()) = resets.changed() => (reset, settled) = (true, false),
                    () = role.lost() => {}
                    () = shutdown.cancelled() => {}
                }
                continue;
            }
            match self.step(&mut places).await {
                Ok(Step::Idle) => {}
                Ok(Step::Settled(_)) => settled = true,
                Ok(Step::Applied(_) | Step::Moved) => continue,
                Err(StepError::Projector(failed)) => {
                    self.on_failure(&mut places, failed).await?;
                    continue;
                }
                Err(StepError::Runner(error)) => return Err(error),
            }
            let deadline = next_deadline(&places);
            tokio::select! {
                () = waiter.wait_until(deadline) => tokio::time::sleep(self.gather).await,
                Ok(()) = resets.changed() => reset = true,
                () = role.lost() => {}
                () = shutdown.cancelled() => {}
            }
        }
        Ok(())
    }

    /// Every projector's stored checkpoint.
    /// Every projector's stored checkpoint, halted where it waits on a parked event.
    async fn stored_places(&self) -> Result<Vec<Place>, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let halts = parked::halts(&mut *conn, &self.names()).await?;
        let mut places = Vec::with_capacity(self.projectors.len());
        for projector in &self.projectors {
            let mut place = Place::at(checkpoint::load(&mut conn, projector.name()).await?);
            place.halted = halts
                .iter()
                .any(|(name, at)| name == projector.name() && *at > place.stored.position);
            places.push(place);
        }
        Ok(places)
    }

    /// True (and noted) when the set may record skips now.
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
}

/// When a waiting runner must look again without being woken: to record skips (events
/// read past but not recorded are recorded within [`SKIP_EVERY`], so that a quiet log leaves
/// every checkpoint at its head), or to retry a paused projector.
fn next_deadline(places: &[Place]) -> Option<tokio::time::Instant> {
    let skip = places
        .iter()
        .any(|p| p.read != p.stored && !p.halted)
        .then(|| Instant::now() + SKIP_EVERY);
    let retry = places.iter().filter_map(|p| p.paused_until).min();
    skip.into_iter()
        .chain(retry)
        .min()
        .map(tokio::time::Instant::from_std)
}
