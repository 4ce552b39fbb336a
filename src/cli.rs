//! The command line: `serve`, `migrate`, `schema`, `projections rebuild|status`,
//! `events export|import`, `audit verify`, `analytics grant|revoke`, `keys new`,
//! `emulate-provider`.

mod analytics;
mod progress;
mod projections;

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use chronicle_projections::LogCursor;
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use tracing::Instrument;

use crate::config::Config;
use crate::provider::{Emulator, Faults};
use crate::startup::{Application, Wiring};
use crate::{api, archive, audit, db, telemetry};
use progress::Progress;

/// How long `projections rebuild` tries for the projector's role: a free one is won at once.
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Chronicle: an event-sourced service for LLM batches, simulations and DICOM transfers.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Command,
}

impl Command {
    /// Whether the command works on an existing database only: it then never creates or
    /// migrates one (a mistyped URL is an error; the readers need SELECT rights alone).
    fn needs_existing_database(&self) -> bool {
        matches!(
            self,
            Self::Events {
                action: EventsAction::Export { .. }
            } | Self::Projections {
                action: ProjectionsAction::Status | ProjectionsAction::Cancel { .. }
            } | Self::Audit {
                action: AuditAction::Verify { .. }
            } | Self::Analytics { .. }
        )
    }

    /// The command's name, for its span.
    fn name(&self) -> &'static str {
        match self {
            Self::Serve => "serve",
            Self::Migrate => "migrate",
            Self::Schema => "schema",
            Self::Projections { .. } => "projections",
            Self::Events { .. } => "events",
            Self::Audit { .. } => "audit",
            Self::EmulateProvider { .. } => "emulate-provider",
            Self::Keys { .. } => "keys",
            Self::Analytics { .. } => "analytics",
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if needed, migrate, and serve GraphQL over HTTP.
    Serve,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Print the GraphQL schema (SDL) that `serve` serves.
    Schema,
    /// Inspect or rebuild projections.
    Projections {
        #[command(subcommand)]
        action: ProjectionsAction,
    },
    /// Export or import the event log.
    Events {
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Check the event log for tampering.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Let analysts' logins read this database's analytics schema.
    Analytics {
        #[command(subcommand)]
        action: AnalyticsAction,
    },
    /// Make API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Serve an emulator of the OpenAI Files and Batch APIs (fake, labelled responses).
    EmulateProvider {
        /// Address to listen on; point a provider's base URL at it.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Polls a batch spends in each of validating, in_progress and finalizing.
        #[arg(long, default_value_t = 1)]
        polls_per_status: u32,
    },
}

#[derive(Debug, Subcommand)]
enum EventsAction {
    /// Write the log as NDJSON (stored events with their hashes) to stdout.
    Export {
        /// Start after this log cursor: `c2.<position>` of the last line of a previous export,
        /// or an API cursor; from the beginning when omitted.
        #[arg(long)]
        after: Option<String>,
        /// Only events of this aggregate type (repeatable).
        #[arg(long = "type")]
        types: Vec<String>,
    },
    /// Read an export from stdin into an empty store, verifying every hash; all or nothing.
    Import,
}

#[derive(Debug, Subcommand)]
enum AnalyticsAction {
    /// Let a login (made if missing) connect to this database alone and read the analytics
    /// schema, with statement and idle-in-transaction timeouts in this database.
    Grant {
        /// The login role.
        login: String,
        /// Longest statement, in seconds.
        #[arg(long, default_value_t = 60)]
        statement_timeout_secs: u64,
        /// Longest idle time inside a transaction, in seconds.
        #[arg(long, default_value_t = 60)]
        idle_timeout_secs: u64,
    },
    /// Take back what `grant` gave a login in this database.
    Revoke {
        /// The login role.
        login: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Print a fresh random API key (e.g. for `CHRONICLE_BOOTSTRAP_ADMIN_KEY`).
    New,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Record a signed checkpoint of every committed event since the last one.
    Checkpoint,
    /// Recompute every event's hash chain and report the first broken link (exit code 2).
    Verify {
        /// Only this aggregate, as `Type:id` (e.g. `Batch:0193…`).
        #[arg(long)]
        aggregate: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ProjectionsAction {
    /// Rebuild a projection's tables (or every projection's) from the start of the log.
    Rebuild {
        /// The projection's name (see `projections status`).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        name: Option<String>,
        /// Rebuild every projection, one after another.
        #[arg(long)]
        all: bool,
    },
    /// Show each projection's position and lag.
    Status,
    /// Call off a projection's rebuild (or dismiss its failure); the live tables stay.
    Cancel {
        /// The projection's name.
        name: String,
    },
}

impl Cli {
    /// Runs the chosen command.
    ///
    /// # Errors
    /// Whatever stopped the command; `main` prints it on one line.
    pub async fn run(self) -> anyhow::Result<()> {
        if let Command::Schema = self.command {
            return write_stdout(&api::sdl());
        }
        if let Command::Keys {
            action: KeysAction::New,
        } = self.command
        {
            let key = crate::security::NewKey::generate();
            return write_stdout(&format!("{}\n", key.token.expose_secret()));
        }
        let otlp = self.config.otlp_endpoint.as_deref();
        let telemetry = telemetry::init(self.config.log_format, otlp)?;
        let command = tracing::info_span!("chronicle", command = self.command.name());
        let result = self.execute().instrument(command).await;
        telemetry.shutdown().await;
        result
    }

    /// Runs the command with telemetry installed.
    async fn execute(self) -> anyhow::Result<()> {
        let config = self.config;
        if let Command::EmulateProvider {
            listen,
            polls_per_status,
        } = self.command
        {
            return emulate(listen, polls_per_status).await;
        }
        let options = db::connect_options(&config.database_url)?;
        let pool = if self.command.needs_existing_database() {
            db::connect_existing(&options, config.db_max_connections).await?
        } else {
            let pool = db::connect(&options, config.db_max_connections).await?;
            db::migrate(&pool).await?;
            pool
        };
        match self.command {
            Command::Serve => {
                let app = Application::build(&config, pool, options, Wiring::standard()).await?;
                tracing::info!(address = %app.local_addr()?, "serving GraphQL at /graphql");
                let shutdown = app.shutdown_token();
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        tracing::info!("shutting down");
                    }
                    shutdown.cancel();
                });
                app.run_until_stopped().await
            }
            Command::Migrate
            | Command::Schema
            | Command::Keys { .. }
            | Command::EmulateProvider { .. } => Ok(()),
            Command::Events {
                action: EventsAction::Export { after, types },
            } => {
                let after = match after {
                    Some(cursor) => cursor.parse().context("--after takes a log cursor")?,
                    None => LogCursor::START,
                };
                let types = (!types.is_empty()).then_some(types);
                let total = archive::count(&pool, after, types.as_deref()).await?;
                let progress = Progress::new("exporting", "events", Some(total));
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                let exported = archive::export(&pool, after, types.as_deref(), &mut out, &|done| {
                    progress.set(done);
                })
                .await;
                progress.finish();
                let exported = exported?;
                out.flush().context("writing to stdout")?;
                tracing::info!(events = exported, "exported");
                Ok(())
            }
            Command::Events {
                action: EventsAction::Import,
            } => {
                // Read from standard input: the total is not known ahead.
                let progress = Progress::new("importing", "events", None);
                let imported =
                    archive::import(&pool, std::io::stdin().lock(), &|done| progress.set(done))
                        .await;
                progress.finish();
                let imported = imported?;
                write_stdout(&format!(
                    "imported {imported} events; projections rebuild from them when the \
                     service starts\n"
                ))
            }
            Command::Audit {
                action: AuditAction::Checkpoint,
            } => {
                let key = config.audit_key();
                let events = audit::checkpoint(&pool, key.as_deref()).await?;
                write_stdout(&format!(
                    "checkpoint over {events} new events{}\n",
                    if key.is_some() {
                        ", signed"
                    } else {
                        ", unsigned (no key set)"
                    }
                ))
            }
            Command::Audit {
                action: AuditAction::Verify { aggregate },
            } => {
                let aggregate = aggregate
                    .as_deref()
                    .map(|a| a.split_once(':').context("--aggregate takes Type:id"))
                    .transpose()?;
                let found = audit::verify(&pool, aggregate).await?;
                let key = config.audit_key();
                let (checkpoints, checkpoint_break) =
                    audit::verify_checkpoints(&pool, key.as_deref()).await?;
                if let Some(broken) = checkpoint_break {
                    write_stdout(&format!(
                        "BROKEN: checkpoint {} ({} checked): {}\n",
                        broken.id, checkpoints, broken.reason
                    ))?;
                    std::process::exit(2);
                }
                let Some(broken) = found.first_break else {
                    return write_stdout(&format!(
                        "intact: {} events checked, {checkpoints} checkpoints{}\n",
                        found.events_checked,
                        if key.is_some() {
                            " with signatures"
                        } else {
                            " (no key: signatures not checked)"
                        }
                    ));
                };
                write_stdout(&format!(
                    "BROKEN: {} of the aggregates checked ({} events); first in the log: \
                     position {}, {} {} event {}: {}\n",
                    found.broken_aggregates,
                    found.events_checked,
                    broken.position,
                    broken.aggregate_type,
                    broken.aggregate_id,
                    broken.sequence,
                    broken.reason
                ))?;
                std::process::exit(2);
            }
            Command::Projections {
                action: ProjectionsAction::Status,
            } => projections::status(&pool).await,
            Command::Projections {
                action: ProjectionsAction::Cancel { name },
            } => projections::cancel(&pool, &name).await,
            Command::Projections {
                action: ProjectionsAction::Rebuild { name, .. },
            } => projections::rebuild(&config, pool, options, name).await,
            Command::Analytics {
                action:
                    AnalyticsAction::Grant {
                        login,
                        statement_timeout_secs,
                        idle_timeout_secs,
                    },
            } => {
                let limits = analytics::Limits {
                    statement_timeout: Duration::from_secs(statement_timeout_secs.max(1)),
                    idle_timeout: Duration::from_secs(idle_timeout_secs.max(1)),
                };
                analytics::grant(&pool, &login, limits).await
            }
            Command::Analytics {
                action: AnalyticsAction::Revoke { login },
            } => analytics::revoke(&pool, &login).await,
        }
    }
}

async fn emulate(listen: std::net::SocketAddr, polls_per_status: u32) -> anyhow::Result<()> {
    let emulator = Emulator::new(Faults {
        polls_per_status,
        ..Faults::default()
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    tracing::info!(address = %listen, "provider emulator serving /v1/files and /v1/batches (fake responses)");
    axum::serve(listener, emulator.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("serving the emulator")
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")
}
