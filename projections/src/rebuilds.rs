//! `projection_rebuilds`: a projection being rebuilt beside its live tables (blue/green),
//! and how far the copies have come. Its phase follows [`Phase::after`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use crate::LogCursor;

/// Where a rebuild stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Loading the copies from the log, with their unique indexes only.
    Building,
    /// The copies have every index; keeping up with the log until the swap.
    Finishing,
    /// The copies are live (the row is gone).
    Swapped,
    /// Gave up on an error; the live tables were never touched.
    Failed,
    /// An admin called it off, or dismissed its failure (the row and the copies are gone).
    Cancelled,
}

/// What moves a rebuild from one phase to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The copies caught up with the log once and got their other indexes.
    Indexed,
    /// The copies took the live tables' place.
    Swapped,
    /// The projector or the copies failed for good.
    Failed,
    /// Someone asked for the rebuild again: it starts from the beginning.
    Restarted,
    /// A newer projector version asked for it: it starts again with that version.
    Superseded,
    /// The live tables' definitions changed since the copies were made (a migration): it
    /// starts again with copies of the new shape.
    Reshaped,
    /// An admin called it off (or dismissed its failure).
    Cancelled,
}

impl Phase {
    /// Every phase, for exhaustive tests.
    pub const ALL: [Self; 5] = [
        Self::Building,
        Self::Finishing,
        Self::Swapped,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The transition table: the phase after `transition`, or `None` when it is not
    /// allowed. Asking again for a rebuild in progress is not a restart: it goes on.
    pub const fn after(self, transition: Transition) -> Option<Self> {
        match (self, transition) {
            (Self::Building, Transition::Indexed) => Some(Self::Finishing),
            (Self::Finishing, Transition::Swapped) => Some(Self::Swapped),
            (Self::Building | Self::Finishing, Transition::Failed) => Some(Self::Failed),
            (Self::Failed, Transition::Restarted)
            | (Self::Building | Self::Finishing | Self::Failed, Transition::Superseded)
            | (Self::Building | Self::Finishing, Transition::Reshaped) => Some(Self::Building),
            (Self::Building | Self::Finishing | Self::Failed, Transition::Cancelled) => {
                Some(Self::Cancelled)
            }
            (Self::Building, Transition::Swapped | Transition::Restarted)
            | (Self::Finishing, Transition::Indexed | Transition::Restarted)
            | (Self::Swapped | Self::Cancelled, _)
            | (
                Self::Failed,
                Transition::Indexed
                | Transition::Swapped
                | Transition::Failed
                | Transition::Reshaped,
            ) => None,
        }
    }

    /// The stored form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Finishing => "finishing",
            Self::Swapped => "swapped",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|phase| phase.as_str() == stored)
    }

    /// Whether the rebuild still runs (not failed, not done).
    pub const fn running(self) -> bool {
        matches!(self, Self::Building | Self::Finishing)
    }
}

/// A rebuild, as its runner and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// The projection rebuilt.
    pub projection: String,
    /// The projector version the copies are built with.
    pub version: i32,
    /// How many times it was started (each restart makes new copies).
    pub attempt: i32,
    /// Where it stands.
    pub phase: Phase,
    /// The last event the copies applied.
    pub cursor: LogCursor,
    /// Events the copies applied.
    pub events_applied: i64,
    /// The API key (or `cli`, `start-up`) that asked for it.
    pub requested_by: String,
    /// When it was asked for.
    pub requested_at: DateTime<Utc>,
    /// When the copies last moved.
    pub updated_at: DateTime<Utc>,
    /// Why it failed.
    pub error: Option<String>,
}

type Row = (
    String,
    i32,
    i32,
    String,
    i64,
    i64,
    String,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<String>,
);

const COLUMNS: &str = "projection, version, attempt, phase, log_position, events_applied,
                       requested_by, requested_at, updated_at, error";

fn from_row(row: Row) -> Result<Rebuild, sqlx::Error> {
    let (projection, version, attempt, phase, position, applied, requested_by, at, updated, error) =
        row;
    let phase = Phase::parse(&phase)
        .ok_or_else(|| sqlx::Error::Decode(format!("unknown rebuild phase `{phase}`").into()))?;
    Ok(Rebuild {
        projection,
        version,
        attempt,
        phase,
        cursor: LogCursor::at(position),
        events_applied: applied,
        requested_by,
        requested_at: at,
        updated_at: updated,
        error,
    })
}

/// Asks for a rebuild of `projection` with its projector at `version`: a new one; a
/// failed one, or one of an older version, started again from the beginning (a new
/// attempt); one in progress at `version` or a newer one goes on as it is. Returns the
/// rebuild; runners are told on commit (`chronicle_resets`).
///
/// # Errors
/// Any database error.
pub async fn request(
    pool: &PgPool,
    projection: &str,
    version: i32,
    by: &str,
) -> Result<Rebuild, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO projection_rebuilds (projection, version, phase, requested_by)
         VALUES ($1, $2, 'failed', $3) ON CONFLICT DO NOTHING",
    )
    .bind(projection)
    .bind(version)
    .bind(by)
    .execute(&mut *tx)
    .await?;
    let row: Row = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_rebuilds WHERE projection = $1 FOR UPDATE"
    ))
    .bind(projection)
    .fetch_one(&mut *tx)
    .await?;
    let current = from_row(row)?;
    let transition = match current.version.cmp(&version) {
        std::cmp::Ordering::Equal => Transition::Restarted,
        std::cmp::Ordering::Less => Transition::Superseded,
        // An older instance never takes a newer version's rebuild back.
        std::cmp::Ordering::Greater => return Ok(current),
    };
    if current.phase.after(transition).is_none() {
        return Ok(current);
    }
    let row: Row = sqlx::query_as(&format!(
        "UPDATE projection_rebuilds
            SET version = $2, phase = 'building', attempt = attempt + 1, log_position = 0,
                events_applied = 0,
                requested_by = $3, requested_at = now(), updated_at = now(), error = NULL
          WHERE projection = $1
         RETURNING {COLUMNS}"
    ))
    .bind(projection)
    .bind(version)
    .bind(by)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify('chronicle_resets', $1)")
        .bind(projection)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    from_row(row)
}

/// The rebuild of `projection`, if there is one.
///
/// # Errors
/// Any database error.
pub async fn load(
    db: impl PgExecutor<'_>,
    projection: &str,
) -> Result<Option<Rebuild>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_rebuilds WHERE projection = $1"
    ))
    .bind(projection)
    .fetch_optional(db)
    .await?;
    row.map(from_row).transpose()
}

/// The rebuild of `projection`, if there is one, locked for the rest of the transaction.
///
/// # Errors
/// Any database error.
pub async fn lock(
    conn: &mut PgConnection,
    projection: &str,
) -> Result<Option<Rebuild>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_rebuilds WHERE projection = $1 FOR UPDATE"
    ))
    .bind(projection)
    .fetch_optional(conn)
    .await?;
    row.map(from_row).transpose()
}

/// Every rebuild, in projection order.
///
/// # Errors
/// Any database error.
pub async fn all(db: impl PgExecutor<'_>) -> Result<Vec<Rebuild>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM projection_rebuilds ORDER BY projection"
    ))
    .fetch_all(db)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// Locks the rebuild of `projection` for the rest of the transaction, if it is still
/// `expected`'s (same version, attempt, phase and position): otherwise someone else moved
/// it, restarted it or swapped it in, and the caller must stop.
///
/// # Errors
/// Any database error.
pub async fn hold(conn: &mut PgConnection, expected: &Rebuild) -> Result<bool, sqlx::Error> {
    let held: Option<i64> = sqlx::query_scalar(
        "SELECT log_position FROM projection_rebuilds
          WHERE projection = $1 AND version = $2 AND phase = $3 AND log_position = $4
            AND attempt = $5
            FOR UPDATE",
    )
    .bind(&expected.projection)
    .bind(expected.version)
    .bind(expected.phase.as_str())
    .bind(expected.cursor.position)
    .bind(expected.attempt)
    .fetch_optional(conn)
    .await?;
    Ok(held.is_some())
}

/// Moves the (held) rebuild's copies to `to`, counting `applied` more events.
///
/// # Errors
/// Any database error.
pub async fn advance(
    conn: &mut PgConnection,
    rebuild: &mut Rebuild,
    to: LogCursor,
    applied: usize,
) -> Result<(), sqlx::Error> {
    let applied = i64::try_from(applied).unwrap_or(i64::MAX);
    sqlx::query(
        "UPDATE projection_rebuilds
            SET log_position = $2, events_applied = events_applied + $3, updated_at = now()
          WHERE projection = $1",
    )
    .bind(&rebuild.projection)
    .bind(to.position)
    .bind(applied)
    .execute(conn)
    .await?;
    rebuild.cursor = to;
    rebuild.events_applied += applied;
    Ok(())
}

/// Moves the (held) rebuild by `transition`, with `error` when it failed; a swap deletes
/// the row. `false` when the transition table forbids it (nothing changes).
///
/// # Errors
/// Any database error.
pub async fn enter(
    conn: &mut PgConnection,
    rebuild: &mut Rebuild,
    transition: Transition,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let Some(phase) = rebuild.phase.after(transition) else {
        return Ok(false);
    };
    if matches!(phase, Phase::Swapped | Phase::Cancelled) {
        sqlx::query("DELETE FROM projection_rebuilds WHERE projection = $1")
            .bind(&rebuild.projection)
            .execute(conn)
            .await?;
    } else {
        sqlx::query(
            "UPDATE projection_rebuilds SET phase = $2, error = $3, updated_at = now()
              WHERE projection = $1",
        )
        .bind(&rebuild.projection)
        .bind(phase.as_str())
        .bind(error)
        .execute(conn)
        .await?;
    }
    rebuild.phase = phase;
    rebuild.error = error.map(str::to_owned);
    Ok(true)
}

/// Records `shape`, the digest of the live tables' definitions the (held) rebuild's copies
/// are made from.
///
/// # Errors
/// Any database error.
pub async fn record_shape(
    conn: &mut PgConnection,
    rebuild: &Rebuild,
    shape: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE projection_rebuilds SET live_shape = $2 WHERE projection = $1")
        .bind(&rebuild.projection)
        .bind(shape)
        .execute(conn)
        .await?;
    Ok(())
}

/// The digest [`record_shape`] recorded for the rebuild's copies.
///
/// # Errors
/// Any database error.
pub async fn shape(
    conn: &mut PgConnection,
    rebuild: &Rebuild,
) -> Result<Option<String>, sqlx::Error> {
    let shape: Option<Option<String>> =
        sqlx::query_scalar("SELECT live_shape FROM projection_rebuilds WHERE projection = $1")
            .bind(&rebuild.projection)
            .fetch_optional(conn)
            .await?;
    Ok(shape.flatten())
}

/// Starts the (held) rebuild again from the beginning, as a new attempt, because the live
/// tables' definitions changed ([`Transition::Reshaped`]); `false` when not allowed.
///
/// # Errors
/// Any database error.
pub async fn reshape(conn: &mut PgConnection, rebuild: &mut Rebuild) -> Result<bool, sqlx::Error> {
    let Some(phase) = rebuild.phase.after(Transition::Reshaped) else {
        return Ok(false);
    };
    sqlx::query(
        "UPDATE projection_rebuilds
            SET phase = $2, attempt = attempt + 1, log_position = 0, events_applied = 0,
                live_shape = NULL, updated_at = now()
          WHERE projection = $1",
    )
    .bind(&rebuild.projection)
    .bind(phase.as_str())
    .execute(conn)
    .await?;
    rebuild.phase = phase;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_transition_of_every_phase_is_allowed_or_refused_as_the_table_says() {
        use Phase::{Building, Cancelled, Failed, Finishing, Swapped};
        use Transition::{
            Cancelled as Cancel, Failed as Fail, Indexed, Reshaped, Restarted, Superseded,
            Swapped as Swap,
        };
        let allowed = [
            (Building, Cancel, Cancelled),
            (Finishing, Cancel, Cancelled),
            (Failed, Cancel, Cancelled),
            (Building, Reshaped, Building),
            (Finishing, Reshaped, Building),
            (Building, Superseded, Building),
            (Finishing, Superseded, Building),
            (Failed, Superseded, Building),
            (Building, Indexed, Finishing),
            (Building, Fail, Failed),
            (Finishing, Swap, Swapped),
            (Finishing, Fail, Failed),
            (Failed, Restarted, Building),
        ];
        for phase in Phase::ALL {
            for transition in [Indexed, Swap, Fail, Restarted, Superseded, Reshaped, Cancel] {
                let expected = allowed
                    .iter()
                    .find(|(from, by, _)| *from == phase && *by == transition)
                    .map(|(.., to)| *to);
                assert_eq!(
                    phase.after(transition),
                    expected,
                    "{phase:?} by {transition:?}"
                );
            }
        }
    }

    #[test]
    fn every_phase_is_read_back_as_stored() {
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()), Some(phase));
        }
        assert_eq!(Phase::parse("rebuilding"), None);
    }
}
