//! The contract every projector fulfils; the runner that drives it lives in the service.

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

    /// Deletes everything this projector wrote, before a rebuild from the start of the log.
    async fn reset(&self, conn: &mut PgConnection) -> Result<(), ProjectionError>;

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

/// Empties `tables` (a projector's reset), one statement each.
///
/// # Errors
/// Any database error.
pub(crate) async fn clear(conn: &mut PgConnection, tables: &[&str]) -> Result<(), ProjectionError> {
    for table in tables {
        sqlx::query(&format!("DELETE FROM {table}"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
