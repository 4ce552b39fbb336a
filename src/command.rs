//! The one command path: load an aggregate, let it decide, append its events with metadata,
//! and report the outcome. GraphQL mutations and process managers both call [`Commands`].

mod idempotency;
mod moves;

use chronicle_aggregates::{DomainError, ErrorCode, Upcast};
use chronicle_projections::{EventMetadata, LogCursor};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::EventStoreAggregateContext;
use cqrs_es::AggregateError;
use std::future::Future;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

pub use idempotency::IdempotencyKey;

use crate::store::EventStores;

/// Who sent a command and what set it in motion; becomes every event's metadata.
#[derive(Debug, Clone)]
pub struct CommandContext {
    /// Client id, or `system` for workers.
    pub actor: String,
    /// Shared by everything one client call set in motion.
    pub correlation_id: String,
    /// The event that triggered the command, when a process manager sends it.
    pub causation_id: Option<String>,
}

impl CommandContext {
    /// The context of a worker's command, correlated with what it works on.
    pub fn system(correlation_id: impl std::fmt::Display) -> Self {
        Self {
            actor: "system".into(),
            correlation_id: correlation_id.to_string(),
            causation_id: None,
        }
    }

    /// The metadata of events appended in this context by command `command_id`.
    pub fn metadata(&self, command_id: String) -> EventMetadata {
        EventMetadata {
            actor: self.actor.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: self.causation_id.clone(),
            command_id,
        }
    }
}

/// What a command did: the aggregate's new version and where its last event sits in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReceipt {
    /// The aggregate's type.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// The aggregate's version (last sequence) after the command.
    pub version: i64,
    /// How many events the command appended.
    pub events: usize,
    /// The last appended event's place in the global log; `None` when nothing was appended.
    pub cursor: Option<LogCursor>,
}

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The aggregate refused the command: a broken rule, with its stable code.
    #[error("{message}")]
    Rejected {
        /// The rule's code.
        code: ErrorCode,
        /// What the rule says.
        message: String,
    },
    /// Another writer appended to the aggregate first.
    #[error("the aggregate was changed concurrently; retry the command")]
    Conflict,
    /// The idempotency key was already used for a different command.
    #[error("idempotency key `{0}` was already used for a different command")]
    IdempotencyKeyReused(String),
    /// The idempotency key is empty, too long, or holds a NUL.
    #[error("idempotency key must be 1 to 200 characters without NUL")]
    InvalidIdempotencyKey,
    /// A unique index of the store refused the write (`0` names it): what the command would
    /// create exists already, written by a command its decision did not see.
    #[error("already exists (unique rule `{0}`)")]
    Duplicate(String),
    /// The database could not be reached.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// Anything else; logged where it is reported.
    #[error("{0}")]
    Internal(String),
}

impl From<sqlx::Error> for CommandError {
    fn from(error: sqlx::Error) -> Self {
        Self::from_database(&error)
    }
}

impl CommandError {
    /// `Duplicate` for a unique index's refusal, `Unavailable` when the database is out of
    /// reach, else `Internal`.
    fn from_database(error: &sqlx::Error) -> Self {
        let unique = error
            .as_database_error()
            .filter(|db| db.is_unique_violation())
            .and_then(|db| db.constraint());
        if let Some(constraint) = unique {
            Self::Duplicate(constraint.to_owned())
        } else if is_unavailable(error) {
            Self::Unavailable(error.to_string())
        } else {
            Self::Internal(error.to_string())
        }
    }
}

/// Longest aggregate id the store takes.
const MAX_AGGREGATE_ID: usize = 200;

/// An id no aggregate can have (too long, or holding control characters such as NUL, which
/// PostgreSQL text cannot store) names nothing: `NOT_FOUND`, before any database call.
fn storable_id<A: cqrs_es::Aggregate>(aggregate_id: &str) -> Result<(), CommandError> {
    if aggregate_id.len() <= MAX_AGGREGATE_ID && !aggregate_id.chars().any(char::is_control) {
        return Ok(());
    }
    Err(CommandError::Rejected {
        code: ErrorCode::NotFound,
        message: format!("{} not found", A::TYPE),
    })
}

/// True for failures that mean "the database is out of reach", where retrying later may work.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    if let sqlx::Error::Database(error) = error {
        return error.code().is_some_and(|code| server_going_away(&code));
    }
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// SQLSTATEs of a server that is out of reach, going away or not back yet: connection
/// exceptions (class 08) and the shutdown codes (57P01 administrator command, e.g.
/// `pg_terminate_backend`; 57P02 crash; 57P03 starting up).
fn server_going_away(sqlstate: &str) -> bool {
    sqlstate.starts_with("08") || matches!(sqlstate, "57P01" | "57P02" | "57P03")
}

impl<E: DomainError> From<AggregateError<E>> for CommandError {
    fn from(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::UserError(rejection) => Self::Rejected {
                code: rejection.code(),
                message: rejection.to_string(),
            },
            AggregateError::AggregateConflict => Self::Conflict,
            AggregateError::DatabaseConnectionError(error) => Self::Unavailable(error.to_string()),
            // cqrs-es reports some store failures as unexpected: a lost database is still one.
            AggregateError::DeserializationError(error)
            | AggregateError::UnexpectedError(error) => match error.downcast_ref::<sqlx::Error>() {
                Some(database) => Self::from_database(database),
                None => Self::Internal(error.to_string()),
            },
        }
    }
}

/// Why [`Commands::attempt`] did not take effect: the aggregate's own typed rejection, for
/// callers that react to it (e.g. a full batch), or any other failure.
#[derive(Debug)]
pub enum Refusal<E> {
    /// The aggregate refused.
    Rejected(E),
    /// Anything else.
    Failed(CommandError),
}

impl<E: DomainError> From<Refusal<E>> for CommandError {
    fn from(refusal: Refusal<E>) -> Self {
        match refusal {
            Refusal::Rejected(rejection) => AggregateError::UserError(rejection).into(),
            Refusal::Failed(error) => error,
        }
    }
}

impl<E: DomainError> From<AggregateError<E>> for Refusal<E> {
    fn from(error: AggregateError<E>) -> Self {
        match error {
            AggregateError::UserError(rejection) => Self::Rejected(rejection),
            other @ (AggregateError::AggregateConflict
            | AggregateError::DatabaseConnectionError(_)
            | AggregateError::DeserializationError(_)
            | AggregateError::UnexpectedError(_)) => Self::Failed(other.into()),
        }
    }
}

impl<E> From<sqlx::Error> for Refusal<E> {
    fn from(error: sqlx::Error) -> Self {
        Self::Failed(error.into())
    }
}

/// An aggregate as loaded for a command (see [`Commands::loaded`]).
pub struct Loaded<A: cqrs_es::Aggregate> {
    context: EventStoreAggregateContext<A>,
    /// Whether it is a state this instance kept in memory (another may have moved it on).
    kept: bool,
}

impl<A: cqrs_es::Aggregate> Loaded<A> {
    /// The aggregate's state.
    pub fn aggregate(&self) -> &A {
        &self.context.aggregate
    }

    /// The aggregate's id.
    pub fn aggregate_id(&self) -> &str {
        &self.context.aggregate_id
    }
}

/// The aggregate a command runs on, and its state when the caller loaded it already.
struct Target<'a, A: cqrs_es::Aggregate> {
    aggregate_id: &'a str,
    loaded: Option<Loaded<A>>,
}

impl<'a, A: cqrs_es::Aggregate> Target<'a, A> {
    fn named(aggregate_id: &'a str) -> Self {
        Self {
            aggregate_id,
            loaded: None,
        }
    }
}

/// How often a command decides again after losing a race to another writer.
const CONFLICT_RETRIES: u32 = 5;

/// A few milliseconds of jitter, so racing writers do not retry in lockstep.
fn rand_jitter() -> u8 {
    Uuid::new_v4().as_bytes()[0] % 8
}

/// Runs commands against the event store.
#[derive(Clone)]
pub struct Commands {
    stores: EventStores,
    locks: PgPool,
}

impl Commands {
    /// A command path over `stores`. Idempotency locks are held on connections of `locks`,
    /// a pool of their own: a lock holder also needs connections to run its command, and
    /// lock holders sharing the main pool could take all of it and wait on each other.
    pub fn new(stores: EventStores, locks: PgPool) -> Self {
        Self { stores, locks }
    }

    /// Runs `command` on aggregate `aggregate_id` of type `A`.
    ///
    /// With an idempotency key, a repeat of the same command (also a concurrent one) has no
    /// second effect and returns the first outcome, success or rejection.
    ///
    /// # Errors
    /// The aggregate's rejection, a concurrent write (`Conflict`), or infrastructure failure.
    pub async fn execute<A>(
        &self,
        context: &CommandContext,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let started = std::time::Instant::now();
        let result = match storable_id::<A>(aggregate_id) {
            Ok(()) => {
                self.execute_keyed::<A>(context, aggregate_id, command, services, idempotency)
                    .await
            }
            Err(refused) => Err(refused),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(CommandError::Rejected { .. }) => "rejected",
            Err(CommandError::Conflict | CommandError::Duplicate(_)) => "conflict",
            Err(
                CommandError::IdempotencyKeyReused(_)
                | CommandError::InvalidIdempotencyKey
                | CommandError::Unavailable(_)
                | CommandError::Internal(_),
            ) => "error",
        };
        crate::metrics::command(A::TYPE, outcome, started.elapsed());
        result
    }

    async fn execute_keyed<A>(
        &self,
        context: &CommandContext,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<CommandReceipt, CommandError>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        match idempotency {
            None => Ok(self
                .attempt::<A>(context, aggregate_id, command, services)
                .await?),
            Some(key) => {
                let pool = self.pool();
                let pools = (pool, &self.locks);
                let recover = |command_id: String| async move {
                    idempotency::recovered(pool, &command_id).await
                };
                idempotency::execute_once(
                    pools,
                    &context.actor,
                    &key,
                    recover,
                    |command_id| async {
                        Ok(self
                            .run::<A>(
                                context,
                                Target::named(aggregate_id),
                                command,
                                services,
                                command_id,
                            )
                            .await?)
                    },
                )
                .await
            }
        }
    }

    /// Runs `operation` (which may send several commands) at most once per (actor, key) and
    /// returns its first outcome to every repeat. With a key, `operation` gets the key's
    /// derived command id, the same on every repeat, so that a repeat after a partial failure
    /// (whose outcome was never stored) can recognize what the first run already did.
    ///
    /// # Errors
    /// The operation's error, or a reused or invalid key.
    pub async fn once<T, F, Fut>(
        &self,
        context: &CommandContext,
        key: Option<IdempotencyKey>,
        operation: F,
    ) -> Result<T, CommandError>
    where
        T: Serialize + DeserializeOwned + Clone,
        F: FnOnce(Option<Uuid>) -> Fut,
        Fut: Future<Output = Result<T, CommandError>>,
    {
        let Some(key) = key else {
            return operation(None).await;
        };
        let pools = (self.pool(), &self.locks);
        let nothing = |_: String| async { Ok(None) };
        idempotency::execute_once(pools, &context.actor, &key, nothing, |command_id| {
            operation(command_id.parse().ok())
        })
        .await
    }

    /// Runs `command` once, without idempotency, keeping the aggregate's typed rejection.
    ///
    /// # Errors
    /// The aggregate's rejection, or any other failure.
    pub async fn attempt<A>(
        &self,
        context: &CommandContext,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
    ) -> Result<CommandReceipt, Refusal<A::Error>>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let command_id = Uuid::now_v7().to_string();
        self.run::<A>(
            context,
            Target::named(aggregate_id),
            command,
            services,
            command_id,
        )
        .await
    }

    /// The current state of an aggregate as stored (its default when it has no events): a
    /// worker decides what to do next on it, so it is never a kept state that another
    /// instance may have overtaken.
    ///
    /// # Errors
    /// The store failed.
    pub async fn load<A>(&self, aggregate_id: &str) -> Result<A, CommandError>
    where
        A: Upcast,
        A::Error: DomainError,
    {
        storable_id::<A>(aggregate_id)?;
        Ok(self.stores.load_stored::<A>(aggregate_id).await?.aggregate)
    }

    /// The current state of an aggregate, kept so that a command can decide on it without
    /// loading it again ([`Commands::attempt_on`]).
    ///
    /// # Errors
    /// The store failed.
    pub async fn loaded<A>(&self, aggregate_id: &str) -> Result<Loaded<A>, CommandError>
    where
        A: Upcast,
        A::Error: DomainError,
    {
        storable_id::<A>(aggregate_id)?;
        let (context, kept) = self.stores.load::<A>(aggregate_id).await?;
        Ok(Loaded { context, kept })
    }

    /// Runs `command` on the aggregate as `loaded` (once; after a conflict, on a fresh load),
    /// without idempotency, keeping the aggregate's typed rejection.
    ///
    /// # Errors
    /// The aggregate's rejection, or any other failure.
    pub async fn attempt_on<A>(
        &self,
        context: &CommandContext,
        loaded: Loaded<A>,
        command: A::Command,
        services: &A::Services,
    ) -> Result<CommandReceipt, Refusal<A::Error>>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let command_id = Uuid::now_v7().to_string();
        let aggregate_id = loaded.context.aggregate_id.clone();
        let target = Target {
            aggregate_id: &aggregate_id,
            loaded: Some(loaded),
        };
        self.run::<A>(context, target, command, services, command_id)
            .await
    }

    /// Runs the command, deciding again on fresh state when another writer got in first:
    /// a conflict only means the decision was made on a stale version.
    async fn run<A>(
        &self,
        context: &CommandContext,
        mut target: Target<'_, A>,
        command: A::Command,
        services: &A::Services,
        command_id: String,
    ) -> Result<CommandReceipt, Refusal<A::Error>>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let mut conflicts = 0;
        loop {
            let loaded = target.loaded.take();
            let outcome = self
                .run_once::<A>(
                    context,
                    (target.aggregate_id, loaded),
                    command.clone(),
                    services,
                    command_id.clone(),
                )
                .await;
            match outcome {
                Err(Refusal::Failed(CommandError::Conflict)) if conflicts < CONFLICT_RETRIES => {
                    conflicts += 1;
                    let pause = u64::from(conflicts) * 3 + u64::from(rand_jitter());
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                other => return other,
            }
        }
    }

    async fn run_once<A>(
        &self,
        context: &CommandContext,
        (aggregate_id, loaded): (&str, Option<Loaded<A>>),
        command: A::Command,
        services: &A::Services,
        command_id: String,
    ) -> Result<CommandReceipt, Refusal<A::Error>>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let (decided, events) = self.decide(aggregate_id, loaded, command, services).await?;
        let previous_version = decided.current_sequence;
        let settlements = decided.aggregate.settlements(&events);
        let settled = self.settle(&settlements).await.map_err(Refusal::Failed)?;
        let metadata = context.metadata(command_id);
        let appended = self
            .stores
            .append(decided, &events, settled, &metadata)
            .await
            .map_err(AggregateError::<A::Error>::from)?;
        let (version, cursor) = match appended.last() {
            Some((version, cursor)) => (version, Some(cursor)),
            None => (to_version(previous_version)?, None),
        };
        Ok(CommandReceipt {
            aggregate_type: A::TYPE.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            version,
            events: appended.events.len(),
            cursor,
        })
    }

    /// Decides `command` on the aggregate as `loaded` (else as loaded now); a refusal decided
    /// on a kept state is decided again on the stored one, which another instance may have
    /// moved on.
    async fn decide<A>(
        &self,
        aggregate_id: &str,
        loaded: Option<Loaded<A>>,
        command: A::Command,
        services: &A::Services,
    ) -> Result<(EventStoreAggregateContext<A>, Vec<A::Event>), Refusal<A::Error>>
    where
        A: Upcast,
        A::Error: DomainError,
        A::Command: Clone,
    {
        let Loaded {
            context: mut decided,
            kept,
        } = match loaded {
            Some(loaded) => loaded,
            None => {
                let (context, kept) = self.stores.load::<A>(aggregate_id).await?;
                Loaded { context, kept }
            }
        };
        // Only a kept state may need deciding again: the command is copied for that alone.
        let again = kept.then(|| command.clone());
        let sink = EventSink::default();
        let refused = match decided.aggregate.handle(command, services, &sink).await {
            Ok(()) => return Ok((decided, sink.collect().await)),
            Err(refused) => refused,
        };
        let Some(command) = again else {
            return Err(Refusal::Rejected(refused));
        };
        self.stores.forget_kept::<A>(aggregate_id);
        let mut stored = self.stores.load_stored::<A>(aggregate_id).await?;
        let sink = EventSink::default();
        stored
            .aggregate
            .handle(command, services, &sink)
            .await
            .map_err(Refusal::Rejected)?;
        Ok((stored, sink.collect().await))
    }

    fn pool(&self) -> &PgPool {
        self.stores.pool()
    }
}

fn to_version<E>(sequence: usize) -> Result<i64, Refusal<E>> {
    i64::try_from(sequence).map_err(|e| Refusal::Failed(CommandError::Internal(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_or_departing_database_is_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_unavailable(&sqlx::Error::Io(refused)));
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::PoolClosed));
        for sqlstate in ["08000", "08006", "57P01", "57P02", "57P03"] {
            assert!(server_going_away(sqlstate), "{sqlstate}");
        }
    }

    #[test]
    fn broken_rules_and_bugs_are_not_unavailable() {
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        for sqlstate in ["23505", "40001", "42P01", "57014", "55000"] {
            assert!(!server_going_away(sqlstate), "{sqlstate}");
        }
    }
}
