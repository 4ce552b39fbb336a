//! `projections status` and `projections rebuild`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context;
use chronicle_projections::checkpoint::{self, State};
use chronicle_projections::rebuilds;
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{write_stdout, CLAIM_WAIT};
use crate::config::Config;
use crate::log::LogReader;
use crate::privacy::Vault;
use crate::projection::{RebuildProgress, Rebuilder, Roles, REBUILD_ROLE};
use crate::security::Pepper;
use crate::startup::Wiring;

/// How often `projections rebuild` looks at a rebuild another instance runs.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// Prints each projection's version, state, position, lag and parked events.
pub(super) async fn status(pool: &PgPool) -> anyhow::Result<()> {
    let mut table = format!(
        "{:<24} {:>3} {:<22} {:>12} {:>10} {:>10} {:>7} {:<16} {}\n",
        "projection", "v", "state", "applied", "lag", "lag (s)", "parked", "cursor", "updated"
    );
    for status in checkpoint::status(pool, &Wiring::standard().projectors).await? {
        table.push_str(&format!(
            "{:<24} {:>3} {:<22} {:>12} {:>10} {:>10.1} {:>7} {:<16} {}\n",
            status.name,
            status.version,
            shown_state(&status),
            status.events_applied,
            status.lag,
            status.lag_seconds,
            status.parked,
            status.cursor.to_string(),
            status.updated_at.to_rfc3339()
        ));
    }
    write_stdout(&table)
}

/// Calls off the rebuild of projection `name` (or dismisses its failure).
pub(super) async fn cancel(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    if !crate::projection::cancel_rebuild(pool, name).await? {
        anyhow::bail!("projection `{name}` has no rebuild to call off");
    }
    write_stdout(&format!(
        "called off the rebuild of {name}; its live tables are unchanged\n"
    ))
}

/// `halted`, `live`, `rebuild 42% (building)`, or `live (rebuild failed)`.
fn shown_state(status: &checkpoint::Status) -> String {
    let rebuild = status.rebuild.as_ref();
    match (status.state(), status.rebuild_progress(), rebuild) {
        (State::Halted, ..) => "halted".to_owned(),
        (State::Rebuilding, Some(done), Some(rebuild)) => {
            format!("rebuild {:.0}% ({})", done * 100.0, rebuild.phase.as_str())
        }
        (State::Live, _, Some(rebuild)) if rebuild.error.is_some() => {
            "live (rebuild failed)".to_owned()
        }
        (State::Rebuilding | State::Live, ..) => "live".to_owned(),
    }
}

/// Rebuilds the projection `name` (every projection when `None`) beside the live tables,
/// in turn, with a progress bar. This process runs the rebuilds unless a running instance
/// holds the rebuild role: then it follows that instance's progress.
pub(super) async fn rebuild(
    config: &Config,
    pool: PgPool,
    options: PgConnectOptions,
    name: Option<String>,
) -> anyhow::Result<()> {
    let wiring = Wiring::standard();
    let known: Vec<&str> = wiring.projectors.iter().map(|p| p.name()).collect();
    let projectors: Vec<_> = match name {
        Some(name) if known.contains(&name.as_str()) => wiring
            .projectors
            .iter()
            .filter(|p| p.name() == name)
            .cloned()
            .collect(),
        Some(name) => anyhow::bail!("no projection `{name}`; known: {}", known.join(", ")),
        None => wiring.projectors.clone(),
    };
    for projector in &projectors {
        rebuilds::request(&pool, projector.name(), projector.version(), "cli").await?;
    }
    let pepper = Pepper::load(&pool, config.security.key_pepper.as_ref()).await?;
    let vault = Vault::new(pool.clone(), pepper.as_bytes());
    let reader = LogReader::new(pool.clone(), wiring.upcasters.into(), vault);
    let rebuilder = Rebuilder::new(pool.clone(), options.clone(), &reader, wiring.projectors);
    let stop = CancellationToken::new();
    let (roles, holding) = Roles::new(options, config.standby_retry(), stop.clone());
    let holding = tokio::spawn(holding);
    let mut role = roles.role(REBUILD_ROLE);
    // Free unless an instance runs rebuilds: then that instance runs these too.
    let ours = role.acquired_within(CLAIM_WAIT).await;
    let mut outcome = Ok(());
    for projector in &projectors {
        let name = projector.name();
        outcome = if ours {
            run_one(&rebuilder, name).await
        } else {
            follow(&pool, name).await
        };
        if outcome.is_err() {
            break;
        }
    }
    stop.cancel();
    holding.await.context("the roles task")?;
    outcome
}

/// A progress bar over the log's positions, made on the first page (when the head is known).
struct Shown {
    label: String,
    bar: OnceLock<Progress>,
}

impl Shown {
    fn new(name: &str) -> Self {
        Self {
            label: format!("rebuilding {name}"),
            bar: OnceLock::new(),
        }
    }

    fn show(&self, done: RebuildProgress) {
        let total = u64::try_from(done.head).unwrap_or(0);
        self.bar
            .get_or_init(|| Progress::new(&self.label, "log positions", Some(total)))
            .set(u64::try_from(done.position).unwrap_or(0));
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish();
        }
    }
}

async fn run_one(rebuilder: &Rebuilder, name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let shown = Shown::new(name);
    let rebuilt = rebuilder.rebuild(name, &|done| shown.show(done)).await;
    shown.finish();
    let applied = rebuilt.with_context(|| format!("rebuilding {name}"))?;
    let seconds = started.elapsed().as_secs_f64();
    write_stdout(&format!(
        "rebuilt {name}: {applied} events in {seconds:.2} s ({:.0} events/s)\n",
        applied as f64 / seconds.max(f64::EPSILON)
    ))
}

/// Follows the rebuild of `name` that a running instance runs, until it is swapped in.
async fn follow(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    let shown = Shown::new(name);
    loop {
        let head: i64 = sqlx::query_scalar("SELECT coalesce(max(log_position), 0) FROM events")
            .fetch_one(pool)
            .await?;
        let Some(rebuild) = rebuilds::load(pool, name).await? else {
            shown.finish();
            return write_stdout(&format!(
                "rebuilt {name} by the running instance that holds the rebuild role\n"
            ));
        };
        if let Some(error) = rebuild.error.filter(|_| !rebuild.phase.running()) {
            shown.finish();
            anyhow::bail!("rebuilding {name} failed: {error}");
        }
        shown.show(RebuildProgress {
            applied: rebuild.events_applied,
            position: rebuild.cursor.position,
            head,
        });
        tokio::time::sleep(FOLLOW_EVERY).await;
    }
}
