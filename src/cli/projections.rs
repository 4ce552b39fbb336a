//! `projections status` and `projections rebuild`.

use std::sync::OnceLock;
use std::time::Instant;

use anyhow::Context;
use chronicle_projections::checkpoint::{self, State};
use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::progress::Progress;
use super::{write_stdout, CLAIM_WAIT};
use crate::config::Config;
use crate::log::LogReader;
use crate::privacy::Vault;
use crate::projection::{ProjectionRunner, Rebuild, RebuildProgress, Roles, RunnerSettings};
use crate::security::Pepper;
use crate::startup::Wiring;

/// Prints each projection's state, position, lag and parked events.
pub(super) async fn status(pool: &PgPool) -> anyhow::Result<()> {
    let mut table = format!(
        "{:<24} {:<10} {:>12} {:>10} {:>10} {:>7} {:<16} {}\n",
        "projection", "state", "applied", "lag", "lag (s)", "parked", "cursor", "updated"
    );
    for status in checkpoint::status(pool, &Wiring::standard().projectors).await? {
        let state = match (status.state(), status.rebuild_progress()) {
            (State::Halted, _) => "halted".to_owned(),
            (State::Rebuilding, Some(done)) => format!("rebuild {:.0}%", done * 100.0),
            (State::Rebuilding | State::Live, _) => "live".to_owned(),
        };
        table.push_str(&format!(
            "{:<24} {:<10} {:>12} {:>10} {:>10.1} {:>7} {:<16} {}\n",
            status.name,
            state,
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

/// Rebuilds the projection `name` (every projection when `None`) from the start of the log,
/// showing progress; hands a rebuild over to the running instance that owns it.
pub(super) async fn rebuild(
    config: &Config,
    pool: PgPool,
    options: PgConnectOptions,
    name: Option<String>,
) -> anyhow::Result<()> {
    let wiring = Wiring::standard();
    let known: Vec<&str> = wiring.projectors.iter().map(|p| p.name()).collect();
    let names: Vec<String> = match name {
        Some(name) if known.contains(&name.as_str()) => vec![name],
        Some(name) => anyhow::bail!("no projection `{name}`; known: {}", known.join(", ")),
        None => known.iter().map(|name| (*name).to_owned()).collect(),
    };
    let pepper = Pepper::load(&pool, config.security.key_pepper.as_ref()).await?;
    let vault = Vault::new(pool.clone(), pepper.as_bytes());
    let reader = LogReader::new(pool.clone(), wiring.upcasters.into(), vault);
    let settings = RunnerSettings {
        page_size: 2000,
        standby_retry: config.standby_retry(),
    };
    let stop = CancellationToken::new();
    let (roles, holding) = Roles::new(options, config.standby_retry(), stop.clone());
    let holding = tokio::spawn(holding);
    let mut outcome = Ok(());
    for name in &names {
        let set = crate::projection::set_of(wiring.projectors.clone(), name)
            .context("every known projection runs in a set")?;
        let runner = ProjectionRunner::new(set, pool.clone(), reader.clone(), settings);
        outcome = rebuild_one(&roles, &runner, name).await;
        if outcome.is_err() {
            break;
        }
    }
    stop.cancel();
    holding.await.context("the roles task")?;
    outcome
}

async fn rebuild_one(roles: &Roles, runner: &ProjectionRunner, name: &str) -> anyhow::Result<()> {
    let mut role = roles.role(&runner.role_name());
    // Free unless an instance runs it: then that instance rebuilds.
    role.acquired_within(CLAIM_WAIT).await;
    let started = Instant::now();
    // The total, the log's head, is known once the rebuild has reset the projection.
    let progress = OnceLock::new();
    let shown = |done: RebuildProgress| {
        let label = format!("rebuilding {name}");
        let total = u64::try_from(done.target).unwrap_or(0);
        progress
            .get_or_init(|| Progress::new(&label, "log events", Some(total)))
            .set(u64::try_from(done.position).unwrap_or(0));
    };
    let rebuilt = runner.rebuild(&role, name, &shown).await;
    if let Some(progress) = progress.get() {
        progress.finish();
    }
    match rebuilt.with_context(|| format!("rebuilding {name}"))? {
        Rebuild::Completed(applied) => {
            let seconds = started.elapsed().as_secs_f64();
            write_stdout(&format!(
                "rebuilt {name}: {applied} events in {seconds:.2} s ({:.0} events/s)\n",
                applied as f64 / seconds.max(f64::EPSILON)
            ))
        }
        Rebuild::HandedOver => write_stdout(&format!(
            "reset {name}; the running instance that owns it is rebuilding it now \
             (follow with `chronicle projections status`)\n"
        )),
    }
}
