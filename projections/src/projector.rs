//! The contract every projector fulfils; the runner that drives it lives in the service.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::PgConnection;

use crate::RecordedEvent;

/// A projector could not apply a page; the page's transaction is rolled back and retried.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The database refused or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An event's payload did not have the shape its type and version promise.
    #[error("event at {position} ({event_type}) is malformed: {reason}")]
    Malformed {
        /// The event's global position.
        position: i64,
        /// The event's type.
        event_type: String,
        /// What was wrong.
        reason: String,
    },
}

/// What a runner does when a projector keeps failing on one event (the database being
/// unreachable is not the projector's failure: that is waited out, whatever the policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailurePolicy {
    /// Attempts at the event before it is parked.
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each.
    pub first_wait: Duration,
    /// The longest wait between two attempts.
    pub max_wait: Duration,
    /// Once the event is parked: halt (apply nothing after it until an admin retries or
    /// skips it) or go on past it.
    pub halt: bool,
}

impl FailurePolicy {
    /// Five attempts over about four seconds, then halt: a read model that skipped an event
    /// would answer wrong from then on, so it waits for an operator instead.
    pub const HALT: Self = Self {
        attempts: 5,
        first_wait: Duration::from_millis(250),
        max_wait: Duration::from_secs(10),
        halt: true,
    };

    /// Like [`Self::HALT`], but goes on past the parked event: for tables of figures, where
    /// one missing event is better than none after it.
    pub const GO_ON: Self = Self {
        halt: false,
        ..Self::HALT
    };
}

/// Builds read-model tables from the global log.
///
/// `apply` runs inside the transaction that also advances the projector's checkpoint, so it
/// must only write through `conn` and must not commit.
#[async_trait]
pub trait Projector: Send + Sync + 'static {
    /// Stable name: the checkpoint's key and the `projections rebuild <name>` argument.
    fn name(&self) -> &'static str;

    /// The aggregate types whose events it needs (`None`: all). The log is filtered in SQL,
    /// so a projector does not read (large) events it would skip.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// What its runner does when it keeps failing on one event.
    fn failure_policy(&self) -> FailurePolicy {
        FailurePolicy::HALT
    }

    /// Its version: bumping it in code makes the next instance to start rebuild the
    /// projection beside the live one (see the rebuild in the service).
    fn version(&self) -> i32 {
        1
    }

    /// Every table it writes, `schema.table` outside `public`, parents before children.
    /// A rebuild builds copies of them beside the live ones and swaps them in; its SQL
    /// must name them unqualified (the rebuild's connection finds the copies first on its
    /// `search_path`).
    fn tables(&self) -> &'static [&'static str];

    /// Indexes besides the unique ones that `apply` itself needs to stay fast; a rebuild
    /// builds them before it loads the copies, and every other index after.
    fn apply_indexes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Applies one page of events, in log order.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        events: &[&RecordedEvent],
    ) -> Result<(), ProjectionError>;
}

/// `projector`'s aggregate types joined by commas (`None`: all), for SQL that checks many
/// projectors in one statement (`string_to_array(types, ',')`).
pub fn type_list(projector: &dyn Projector) -> Option<String> {
    projector.aggregate_types().map(|types| types.join(","))
}
