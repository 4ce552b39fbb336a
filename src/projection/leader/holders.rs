//! Who holds what, across every instance on the database, read from its locks (admin views).

use chrono::{DateTime, Utc};

use super::{advisory_lock_of, lock_key, INSTANCE_KEY};

/// Who holds one role, or one partition of a partitioned role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The role.
    pub role: String,
    /// The partition, for a partitioned role.
    pub partition: Option<u16>,
    /// The holding instance's name (its connections' `application_name`), if any holds it.
    pub instance: Option<String>,
    /// The holding roles connection's server process.
    pub pid: Option<i32>,
    /// Since when the holding session exists.
    pub since: Option<DateTime<Utc>>,
}

/// One row of [`holders`].
#[derive(sqlx::FromRow)]
struct HolderRow {
    role: String,
    partition: Option<i32>,
    instance: Option<String>,
    pid: Option<i32>,
    since: Option<DateTime<Utc>>,
}

/// A live instance: a session holding the instance lock.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LiveInstance {
    /// Its name (its connections' `application_name`).
    pub name: String,
    /// Its roles connection's server process.
    pub pid: i32,
    /// Since when that connection exists.
    pub since: DateTime<Utc>,
}

/// Who holds each of `roles` (name and partition count, as `Roles::described` gives them)
/// now: one row per role held whole, one per partition of the others.
///
/// # Errors
/// Any database error.
pub async fn holders(
    db: impl sqlx::PgExecutor<'_>,
    roles: &[(String, u16)],
) -> Result<Vec<Holder>, sqlx::Error> {
    let mut names = Vec::new();
    let mut partitions = Vec::new();
    let mut keys = Vec::new();
    for (role, count) in roles {
        for partition in 0..*count {
            names.push(role.clone());
            partitions.push((*count > 1).then_some(i32::from(partition)));
            keys.push(lock_key(role, *count, partition));
        }
    }
    let rows: Vec<HolderRow> = sqlx::query_as(concat!(
        "SELECT r.role, r.partition, a.application_name AS instance, a.pid,
                a.backend_start AS since
           FROM unnest($1::text[], $2::int[], $3::text[]) WITH ORDINALITY
                AS r(role, partition, key, n)
           LEFT JOIN pg_locks l ON l.mode = 'ExclusiveLock' AND ",
        advisory_lock_of!("r.key"),
        " LEFT JOIN pg_stat_activity a ON a.pid = l.pid
          ORDER BY r.n"
    ))
    .bind(&names)
    .bind(&partitions)
    .bind(&keys)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Holder {
            role: row.role,
            partition: row.partition.and_then(|p| u16::try_from(p).ok()),
            instance: row.instance,
            pid: row.pid,
            since: row.since,
        })
        .collect())
}

/// The live instances on the database, oldest first.
///
/// # Errors
/// Any database error.
pub async fn live_instances(
    db: impl sqlx::PgExecutor<'_>,
) -> Result<Vec<LiveInstance>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT a.application_name AS name, a.pid, a.backend_start AS since
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
          WHERE l.mode = 'ShareLock' AND ",
        advisory_lock_of!("$1"),
        " ORDER BY a.backend_start, a.pid"
    ))
    .bind(INSTANCE_KEY)
    .fetch_all(db)
    .await
}
