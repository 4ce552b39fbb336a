//! Roles (a projector, a worker) that one instance at a time may hold: session-level advisory
//! locks, all of one instance's on one dedicated connection.
//!
//! A lock lives as long as the connection: if this instance dies or loses its connection,
//! PostgreSQL releases every lock it held and standbys take over. One task owns the
//! connection. While every wanted role is held it only checks that the connection is alive
//! (a protocol sync, no statement); while some role is held elsewhere it asks for all the
//! missing ones in one statement, at most once per retry interval. Standbys therefore open no
//! new sessions while they wait. The connection also holds a lock every live instance holds
//! shared; its holders are counted (the live instances, which split the rate limits) when the
//! connection opens and when the rate limiter, in use, asks. The checkpoint's optimistic update (see
//! `chronicle_projections::checkpoint`) guards the short window in which a leader has not
//! yet noticed that it lost its connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// The roles this instance wants, and who is told when one is won or lost.
#[derive(Clone)]
pub struct Roles {
    wanted: Arc<Mutex<HashMap<String, watch::Sender<bool>>>>,
    /// Wakes the owner task when a role is asked for.
    asked: Arc<Notify>,
    /// Live instances on the database, this one included (1 until first counted).
    instances: Arc<watch::Sender<usize>>,
    /// Asks the owner task to count the live instances again.
    count_asked: Arc<Notify>,
    /// Whether this process serves (counts among the live instances) or is a tool.
    serving: bool,
}

/// The live instance count as it changes, and a way to ask for it to be counted again.
#[derive(Clone)]
pub struct InstanceCount {
    /// The count, as counted last.
    pub live: watch::Receiver<usize>,
    asked: Arc<Notify>,
}

impl InstanceCount {
    /// Asks the roles connection to count the live instances again (one read, soon).
    pub fn recount(&self) {
        self.asked.notify_one();
    }
}

/// One role: whether this instance holds it, as it changes.
#[derive(Clone)]
pub struct Role {
    held: watch::Receiver<bool>,
}

impl Roles {
    /// The roles of a tool (a CLI rebuild), and the task to run (spawn it) that claims them
    /// on one connection opened with `options`, asking for missing roles every `retry`,
    /// until `shutdown` (which releases them all, as does dropping the task). A tool is not
    /// a live instance: it does not count in the instances that split the rate limits.
    pub fn new(
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        Self::start(options, retry, shutdown, false)
    }

    /// Like [`Roles::new`], for an instance that serves: it counts among the live instances.
    pub fn serving(
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        Self::start(options, retry, shutdown, true)
    }

    fn start(
        options: PgConnectOptions,
        retry: Duration,
        shutdown: CancellationToken,
        serving: bool,
    ) -> (Self, impl std::future::Future<Output = ()> + Send + 'static) {
        let roles = Self {
            wanted: Arc::default(),
            asked: Arc::default(),
            instances: Arc::new(watch::channel(1).0),
            count_asked: Arc::default(),
            serving,
        };
        let task = roles.clone().hold(options, retry, shutdown);
        (roles, task)
    }

    /// The role `name` (`projection.<name>` for projectors, a worker's name otherwise); it is
    /// claimed from now on.
    pub fn role(&self, name: &str) -> Role {
        let mut wanted = self.lock();
        let sender = wanted
            .entry(name.to_owned())
            .or_insert_with(|| watch::channel(false).0);
        let held = sender.subscribe();
        crate::metrics::role_held(name, *held.borrow());
        drop(wanted);
        self.asked.notify_one();
        Role { held }
    }

    /// How many instances are live on the database, this one included, as counted last:
    /// every instance's roles connection holds a shared lock that the count reads, so a
    /// dead instance leaves the count with its connection. It is counted when the
    /// connection opens and when [`InstanceCount::recount`] asks: an idle instance reads
    /// nothing.
    pub fn instances(&self) -> InstanceCount {
        InstanceCount {
            live: self.instances.subscribe(),
            asked: self.count_asked.clone(),
        }
    }

    /// The names of the roles this instance claims, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lock().keys().cloned().collect();
        names.sort();
        names
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<bool>>> {
        self.wanted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Owns the connection: claim, keep, and on its loss tell every role and start over.
    async fn hold(self, options: PgConnectOptions, retry: Duration, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            match options.connect().await {
                Ok(conn) => {
                    if let Err(error) = self.keep(conn, retry, &shutdown).await {
                        tracing::warn!(%error, "the roles connection failed; every role is released");
                    }
                    self.set_all(false);
                }
                Err(error) => tracing::warn!(%error, "cannot open the roles connection"),
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => {}
                () = shutdown.cancelled() => {}
            }
        }
    }

    async fn keep(
        &self,
        mut conn: PgConnection,
        retry: Duration,
        shutdown: &CancellationToken,
    ) -> Result<(), sqlx::Error> {
        if self.serving {
            sqlx::query("SELECT pg_advisory_lock_shared(hashtextextended($1, 0))")
                .bind(lock_key(INSTANCE))
                .execute(&mut conn)
                .await?;
            self.count_instances(&mut conn).await?;
        }
        loop {
            let missing = self.missing();
            if !missing.is_empty() {
                for won in claim(&mut conn, &missing).await? {
                    if let Some(sender) = self.lock().get(&won) {
                        sender.send_replace(true);
                        crate::metrics::role_held(&won, true);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(retry) => conn.ping().await?,
                () = self.asked.notified() => {}
                () = self.count_asked.notified() => self.count_instances(&mut conn).await?,
                () = shutdown.cancelled() => {
                    // Closing releases every lock at once, for the standbys.
                    return conn.close().await;
                }
            }
        }
    }

    /// Counts the live instances (one statement on the roles connection, which also shows
    /// that the connection is alive).
    async fn count_instances(&self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
              WHERE locktype = 'advisory' AND granted AND objsubid = 1 AND mode = 'ShareLock'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND ((classid::bigint << 32) | objid::bigint) = hashtextextended($1, 0)",
        )
        .bind(lock_key(INSTANCE))
        .fetch_one(conn)
        .await?;
        let live = usize::try_from(live).unwrap_or(1).max(1);
        self.instances.send_if_modified(|known| {
            let changed = *known != live;
            *known = live;
            changed
        });
        crate::metrics::instances_live(live);
        Ok(())
    }

    fn missing(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, sender)| !*sender.borrow())
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn set_all(&self, held: bool) {
        for (role, sender) in self.lock().iter() {
            sender.send_replace(held);
            crate::metrics::role_held(role, held);
        }
    }
}

/// Tries every role in `names` in one statement; returns those won.
async fn claim(conn: &mut PgConnection, names: &[String]) -> Result<Vec<String>, sqlx::Error> {
    let keys: Vec<String> = names.iter().map(|name| lock_key(name)).collect();
    let won: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_try_advisory_lock(hashtextextended(key, 0))
           FROM unnest($1::text[]) WITH ORDINALITY AS k(key, n) ORDER BY n",
    )
    .bind(&keys)
    .fetch_all(conn)
    .await?;
    Ok(names
        .iter()
        .zip(won)
        .filter(|(_, won)| *won)
        .map(|(name, _)| name.clone())
        .collect())
}

impl Role {
    /// Whether this instance holds the role now.
    pub fn is_held(&self) -> bool {
        *self.held.borrow()
    }

    /// Whether this instance holds the role within `wait` (for one-off tools that must not
    /// wait for a running instance to let go).
    pub async fn acquired_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.acquired()).await.is_ok()
    }

    /// Waits until this instance holds the role.
    pub async fn acquired(&mut self) {
        // An error means the roles task stopped (shutdown): the role never comes.
        if self.held.wait_for(|held| *held).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until this instance no longer holds the role (its connection was lost, or the
    /// instance is stopping).
    pub async fn lost(&mut self) {
        let _ = self.held.wait_for(|held| !*held).await;
    }

    /// Runs `lead` each time this instance wins the role, until `shutdown`. `lead` returns
    /// when it sees the role lost ([`Role::is_held`]) or the shutdown, finishing what it is
    /// doing first; when it returns on its own (a failure) while the role is still held, it
    /// runs again after `pause`.
    pub async fn lead_while_held<F, Fut>(
        mut self,
        pause: Duration,
        shutdown: &CancellationToken,
        mut lead: F,
    ) where
        F: FnMut(Role) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        while !shutdown.is_cancelled() {
            tokio::select! {
                () = self.acquired() => {}
                () = shutdown.cancelled() => return,
            }
            lead(self.clone()).await;
            if self.is_held() {
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Who holds a role, across every instance on the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The role.
    pub role: String,
    /// The holding instance's name (its connections' `application_name`), if any holds it.
    pub instance: Option<String>,
    /// Since when the holding session exists.
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Who holds each of `roles` now, from the database's locks.
///
/// # Errors
/// Any database error.
pub async fn holders(
    db: impl sqlx::PgExecutor<'_>,
    roles: &[String],
) -> Result<Vec<Holder>, sqlx::Error> {
    let keys: Vec<String> = roles.iter().map(|role| lock_key(role)).collect();
    let rows: Vec<(
        String,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as(
        "SELECT r.role, a.application_name, a.backend_start
               FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS r(role, key, n)
               LEFT JOIN pg_locks l
                      ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                     AND l.database = (SELECT oid FROM pg_database
                                        WHERE datname = current_database())
                     AND ((l.classid::bigint << 32) | l.objid::bigint)
                         = hashtextextended(r.key, 0)
               LEFT JOIN pg_stat_activity a ON a.pid = l.pid
              ORDER BY r.n",
    )
    .bind(roles)
    .bind(&keys)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(role, instance, since)| Holder {
            role,
            instance,
            since,
        })
        .collect())
}

/// The lock every live instance holds shared (not a role: no one holds it alone).
const INSTANCE: &str = "instance";

/// The advisory lock of a role: `chronicle.<role>`.
fn lock_key(role: &str) -> String {
    format!("chronicle.{role}")
}
