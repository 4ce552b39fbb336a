//! `parked_events`: events a projector failed on after every attempt its
//! [`FailurePolicy`](crate::FailurePolicy) allows, set aside so that the others go on.
//!
//! A parked event is written in the transaction that holds (or moves past it) the
//! projector's checkpoint, and resolved in the one that applies it: it takes effect at most
//! once. Its status follows [`ParkedStatus::after`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor};

use crate::RecordedEvent;

/// Where a parked event stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParkedStatus {
    /// Set aside; a retry or a skip resolves it.
    Parked,
    /// A retry applied it.
    Applied,
    /// An admin gave it up: the projector never applies it.
    Skipped,
}

/// What happened to a parked event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Resolution {
    /// A retry applied it.
    Applied,
    /// A retry failed again.
    FailedAgain,
    /// An admin skipped it.
    Skipped,
}

impl ParkedStatus {
    /// Every status, for exhaustive tests.
    pub const ALL: [Self; 3] = [Self::Parked, Self::Applied, Self::Skipped];

    /// The transition table: the status after `resolution`, or `None` when it is not
    /// allowed (only a parked event can be retried or skipped).
    pub const fn after(self, resolution: Resolution) -> Option<Self> {
        match (self, resolution) {
            (Self::Parked, Resolution::Applied) => Some(Self::Applied),
            (Self::Parked, Resolution::FailedAgain) => Some(Self::Parked),
            (Self::Parked, Resolution::Skipped) => Some(Self::Skipped),
            (Self::Applied | Self::Skipped, _) => None,
        }
    }

    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Parked => "parked",
            Self::Applied => "applied",
            Self::Skipped => "skipped",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == stored)
    }
}

/// A parked event, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// The projector that failed on it.
    pub projection: String,
    /// The event's log position.
    pub position: i64,
    /// Its aggregate's type.
    pub aggregate_type: String,
    /// Its aggregate's id.
    pub aggregate_id: String,
    /// Its place in its aggregate's stream.
    pub sequence: i64,
    /// Its type.
    pub event_type: String,
    /// Failed attempts so far.
    pub attempts: i32,
    /// The last failure.
    pub error: String,
    /// Whether the projector halted on it.
    pub halted: bool,
    /// Where it stands.
    pub status: ParkedStatus,
    /// When it was parked.
    pub parked_at: DateTime<Utc>,
    /// The API key that retried or skipped it.
    pub resolved_by: Option<String>,
    /// When it was retried or skipped.
    pub resolved_at: Option<DateTime<Utc>>,
}

type Row = (
    String,
    i64,
    String,
    String,
    i64,
    String,
    i32,
    String,
    bool,
    String,
    DateTime<Utc>,
    Option<String>,
    Option<DateTime<Utc>>,
);

const COLUMNS: &str = "projection, log_position, aggregate_type, aggregate_id, sequence, \
                       event_type, attempts, error, halted, status, parked_at, resolved_by, \
                       resolved_at";

fn parked(row: Row) -> Result<Parked, sqlx::Error> {
    let status = ParkedStatus::parse(&row.9)
        .ok_or_else(|| sqlx::Error::Decode(format!("parked status `{}`", row.9).into()))?;
    Ok(Parked {
        projection: row.0,
        position: row.1,
        aggregate_type: row.2,
        aggregate_id: row.3,
        sequence: row.4,
        event_type: row.5,
        attempts: row.6,
        error: row.7,
        halted: row.8,
        status,
        parked_at: row.10,
        resolved_by: row.11,
        resolved_at: row.12,
    })
}

/// Parks `event` for `projection` after `attempts` failures, the last with `error`; a
/// halting projector applies nothing after it until it is resolved. Parking an event again
/// (a crash between parking and moving on) only updates the failure.
///
/// # Errors
/// Any database error.
pub async fn park(
    conn: &mut PgConnection,
    projection: &str,
    event: &RecordedEvent,
    attempts: u32,
    error: &str,
    halted: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO parked_events (projection, log_position, aggregate_type, aggregate_id,
                                    sequence, event_type, attempts, error, halted)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (projection, log_position) DO UPDATE
            SET attempts = EXCLUDED.attempts, error = EXCLUDED.error, halted = EXCLUDED.halted
          WHERE parked_events.status = 'parked'",
    )
    .bind(projection)
    .bind(event.cursor.position)
    .bind(&event.aggregate_type)
    .bind(&event.aggregate_id)
    .bind(event.sequence)
    .bind(&event.event_type)
    .bind(i32::try_from(attempts).unwrap_or(i32::MAX))
    .bind(error)
    .bind(halted)
    .execute(conn)
    .await?;
    Ok(())
}

/// The parked events of `projections` (all when `None`), newest first, at most `limit`.
///
/// # Errors
/// Any database error.
pub async fn list(
    db: impl PgExecutor<'_>,
    projections: Option<&[&str]>,
    limit: i64,
) -> Result<Vec<Parked>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM parked_events
          WHERE $1::text[] IS NULL OR projection = ANY($1)
          ORDER BY parked_at DESC, projection, log_position DESC LIMIT $2"
    ))
    .bind(projections)
    .bind(limit)
    .fetch_all(db)
    .await?;
    rows.into_iter().map(parked).collect()
}

/// The parked event of `projection` at `position`, locked for the rest of the transaction.
///
/// # Errors
/// Any database error.
pub async fn lock(
    conn: &mut PgConnection,
    projection: &str,
    position: i64,
) -> Result<Option<Parked>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM parked_events
          WHERE projection = $1 AND log_position = $2 FOR UPDATE"
    ))
    .bind(projection)
    .bind(position)
    .fetch_optional(conn)
    .await?;
    row.map(parked).transpose()
}

/// Records `resolution` of the parked event by `by`: `error` is the new failure of a retry
/// that failed again. An event resolved meanwhile (by another admin) is left as it is.
///
/// # Errors
/// Any database error.
pub async fn resolve(
    db: impl PgExecutor<'_>,
    parked: &Parked,
    resolution: Resolution,
    by: &str,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    let status = parked.status.after(resolution).unwrap_or(parked.status);
    let failed = i32::from(resolution == Resolution::FailedAgain);
    sqlx::query(
        "UPDATE parked_events
            SET status = $3, attempts = attempts + $4, error = coalesce($5, error),
                resolved_by = CASE WHEN $3 = 'parked' THEN resolved_by ELSE $6 END,
                resolved_at = CASE WHEN $3 = 'parked' THEN resolved_at ELSE now() END
          WHERE projection = $1 AND log_position = $2 AND status = 'parked'",
    )
    .bind(&parked.projection)
    .bind(parked.position)
    .bind(status.as_str())
    .bind(failed)
    .bind(error)
    .bind(by)
    .execute(db)
    .await?;
    Ok(())
}

/// Where each of `projections` is halted: the position of the parked event it waits on.
///
/// # Errors
/// Any database error.
pub async fn halts(
    db: impl PgExecutor<'_>,
    projections: &[&str],
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT projection, min(log_position) FROM parked_events
          WHERE projection = ANY($1) AND status = 'parked' AND halted
          GROUP BY projection",
    )
    .bind(projections)
    .fetch_all(db)
    .await
}

/// Forgets the parked events `projection` halted on, as rebuilt tables that applied them
/// take the live ones' place. Those it went past and those an admin resolved stay: the
/// rebuild went past the same ones.
///
/// # Errors
/// Any database error.
pub async fn forget_halts(conn: &mut PgConnection, projection: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM parked_events WHERE projection = $1 AND status = 'parked' AND halted")
        .bind(projection)
        .execute(conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESOLUTIONS: [Resolution; 3] = [
        Resolution::Applied,
        Resolution::FailedAgain,
        Resolution::Skipped,
    ];

    #[test]
    fn only_a_parked_event_is_retried_or_skipped() {
        use ParkedStatus::{Applied, Parked, Skipped};
        let allowed = [
            (Parked, Resolution::Applied, Applied),
            (Parked, Resolution::FailedAgain, Parked),
            (Parked, Resolution::Skipped, Skipped),
        ];
        for from in ParkedStatus::ALL {
            for resolution in RESOLUTIONS {
                let expected = allowed
                    .iter()
                    .find(|(f, r, _)| *f == from && *r == resolution)
                    .map(|(.., to)| *to);
                assert_eq!(
                    from.after(resolution),
                    expected,
                    "{from:?} + {resolution:?}"
                );
            }
        }
        assert_eq!(Applied.after(Resolution::Skipped), None);
        assert_eq!(Skipped.after(Resolution::Applied), None);
    }

    #[test]
    fn statuses_round_trip_through_their_stored_form() {
        for status in ParkedStatus::ALL {
            assert_eq!(ParkedStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(ParkedStatus::parse("halted"), None);
    }
}
