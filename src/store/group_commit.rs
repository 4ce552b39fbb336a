//! Group commit: the appends of commands in flight share one transaction.
//!
//! Every append takes the log lock and holds it until its transaction commits, so appends
//! are serial whatever their number; one transaction per command would pay one commit (and
//! one WAL flush) each. One task writes instead: it takes the appends waiting when its
//! previous transaction ends, writes them in one transaction (one `INSERT` of all their
//! events, one of all their snapshots, the inline projectors once) and answers each only
//! after the commit. A lone command waits for no one: the group is whatever is already
//! queued. Two appends to one aggregate never share a group (the later goes in the next:
//! per-aggregate order is arrival order). When a group fails for any reason but a lost
//! database, its appends are retried one transaction each, so that one append's conflict or
//! bad event fails that append alone.

use std::collections::{HashMap, HashSet, VecDeque};

use chronicle_projections::{EventMetadata, LogCursor, ProjectionError, RecordedEvent};
use chrono::{DateTime, Utc};
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::append::{to_i64, Append, Appended};
use super::inline::InlineProjectors;
use super::repository::persistence;
use crate::privacy::{holds_personal_data, Vault};

/// Appends one group takes at most.
const GROUP_APPENDS: usize = 256;
/// A group takes no further append once it holds this many events (one append may hold more).
const GROUP_EVENTS: usize = 4_096;
/// Appends queued before senders wait.
const QUEUE: usize = 4_096;

/// Submits appends to the instance's group committer.
#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<Pending>,
}

struct Pending {
    append: Append,
    reply: oneshot::Sender<Result<Appended, PersistenceError>>,
}

impl Appender {
    /// Starts the committer over `pool`; it ends when the last `Appender` is dropped.
    pub fn start(pool: PgPool, vault: Vault, inline: InlineProjectors) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        let committer = Committer {
            pool,
            vault,
            inline,
        };
        tokio::spawn(committer.run(pending));
        Self { queue }
    }

    /// Writes `append` in the next group; returns after its transaction committed.
    ///
    /// # Errors
    /// `OptimisticLockError` when another writer appended to the aggregate first; the
    /// database's failure otherwise.
    pub async fn append(&self, append: Append) -> Result<Appended, PersistenceError> {
        if append.events.is_empty() && append.snapshot.is_none() {
            return Ok(Appended::default());
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || PersistenceError::UnknownError("the group committer has stopped".into());
        self.queue
            .send(Pending { append, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Why a group's transaction failed.
enum Failure {
    Database(sqlx::Error),
    Malformed(ProjectionError),
    /// A newer snapshot exists: another writer appended first.
    StaleSnapshot,
}

impl From<sqlx::Error> for Failure {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

impl From<ProjectionError> for Failure {
    fn from(error: ProjectionError) -> Self {
        match error {
            ProjectionError::Database(error) => Self::Database(error),
            malformed @ ProjectionError::Malformed { .. } => Self::Malformed(malformed),
        }
    }
}

impl Failure {
    fn unavailable(&self) -> bool {
        matches!(self, Self::Database(error) if crate::command::is_unavailable(error))
    }

    /// The failure as each of `count` appends is told it.
    fn told(self, count: usize) -> Vec<PersistenceError> {
        let described = self.describe();
        let mut errors = Vec::with_capacity(count);
        errors.push(match self {
            Self::Database(error) => persistence(error),
            Self::Malformed(error) => PersistenceError::UnknownError(Box::new(error)),
            Self::StaleSnapshot => PersistenceError::OptimisticLockError,
        });
        errors.extend((1..count).map(|_| described()));
        errors
    }

    fn describe(&self) -> impl Fn() -> PersistenceError {
        let unavailable = self.unavailable();
        let message = match self {
            Self::Database(error) => error.to_string(),
            Self::Malformed(error) => error.to_string(),
            Self::StaleSnapshot => String::new(),
        };
        let stale = matches!(self, Self::StaleSnapshot);
        move || match (stale, unavailable) {
            (true, _) => PersistenceError::OptimisticLockError,
            (false, true) => PersistenceError::ConnectionError(message.clone().into()),
            (false, false) => PersistenceError::UnknownError(message.clone().into()),
        }
    }
}

struct Committer {
    pool: PgPool,
    vault: Vault,
    inline: InlineProjectors,
}

impl Committer {
    async fn run(self, mut queue: mpsc::Receiver<Pending>) {
        let mut deferred = VecDeque::new();
        while let Some(group) = next_group(&mut queue, &mut deferred).await {
            self.commit(group).await;
        }
    }

    /// Commits `group` together, or, when that fails for a reason of one append, each alone.
    async fn commit(&self, group: Vec<Pending>) {
        crate::metrics::group_commit(group.len());
        let appends: Vec<&Append> = group.iter().map(|p| &p.append).collect();
        match self.transaction(&appends).await {
            Ok(appended) => {
                for (pending, appended) in group.into_iter().zip(appended) {
                    let _ = pending.reply.send(Ok(appended));
                }
            }
            Err(failure) if group.len() > 1 && !failure.unavailable() => {
                for pending in group {
                    let alone = self.transaction(&[&pending.append]).await;
                    let answer = alone.map(|mut appended| appended.remove(0));
                    let _ = pending
                        .reply
                        .send(answer.map_err(|failure| failure.told(1).remove(0)));
                }
            }
            Err(failure) => {
                let count = group.len();
                for (pending, error) in group.into_iter().zip(failure.told(count)) {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }

    /// One transaction: seal personal data, insert every event, apply the inline
    /// projectors, write the snapshots, commit.
    async fn transaction(&self, appends: &[&Append]) -> Result<Vec<Appended>, Failure> {
        let mut tx = self.pool.begin().await?;
        let sealed = self.seal(&mut tx, appends).await?;
        let stored = insert_events(&mut tx, appends, &sealed).await?;
        self.apply_inline(&mut tx, appends, &stored).await?;
        write_snapshots(&mut tx, appends, &sealed).await?;
        tx.commit().await?;
        Ok(appends
            .iter()
            .map(|append| Appended {
                events: append
                    .events
                    .iter()
                    .filter_map(|e| Some((to_i64(e.sequence), landed(&stored, append, e)?.0)))
                    .collect(),
            })
            .collect())
    }

    /// The payloads of appends to aggregates holding personal data, sealed (copies: the
    /// inline projectors, and a retry of the append alone, need the open ones).
    async fn seal(
        &self,
        conn: &mut PgConnection,
        appends: &[&Append],
    ) -> Result<Vec<Option<Sealed>>, Failure> {
        let mut sealed = Vec::with_capacity(appends.len());
        for append in appends {
            if !holds_personal_data(append.aggregate_type) {
                sealed.push(None);
                continue;
            }
            let mut events: Vec<(String, Value)> = append
                .events
                .iter()
                .map(|e| (e.event_type.clone(), e.payload.clone()))
                .collect();
            let mut snapshot = append.snapshot.as_ref().map(|s| s.payload.clone());
            self.vault
                .seal(
                    conn,
                    (append.aggregate_type, &append.aggregate_id),
                    &mut events,
                    snapshot.as_mut(),
                )
                .await?;
            sealed.push(Some(Sealed {
                events: events.into_iter().map(|(_, payload)| payload).collect(),
                snapshot,
            }));
        }
        Ok(sealed)
    }

    /// Applies the inline projectors to the group's events, open, in log order.
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        appends: &[&Append],
        stored: &Stored<'_>,
    ) -> Result<(), Failure> {
        let mut recorded: Vec<RecordedEvent> = appends
            .iter()
            .filter(|append| self.inline.want(append.aggregate_type))
            .flat_map(|append| append.events.iter().map(move |e| (append, e)))
            .filter_map(|(append, e)| {
                let (cursor, recorded_at) = landed(stored, append, e)?;
                Some(RecordedEvent {
                    cursor,
                    metadata: EventMetadata::from_value(&e.metadata),
                    sequence: to_i64(e.sequence),
                    aggregate_type: e.aggregate_type.clone(),
                    aggregate_id: e.aggregate_id.clone(),
                    event_type: e.event_type.clone(),
                    event_version: e.event_version.clone(),
                    payload: e.payload.clone(),
                    recorded_at,
                })
            })
            .collect();
        if recorded.is_empty() {
            return Ok(());
        }
        recorded.sort_unstable_by_key(|e| e.cursor.position);
        Ok(self.inline.apply(conn, &recorded).await?)
    }
}

/// An append's payloads as stored: personal fields sealed.
struct Sealed {
    events: Vec<Value>,
    snapshot: Option<Value>,
}

/// The next group: appends deferred from the last group first, then whatever is queued,
/// without waiting for more; `None` once every `Appender` is gone and nothing is left.
async fn next_group(
    queue: &mut mpsc::Receiver<Pending>,
    deferred: &mut VecDeque<Pending>,
) -> Option<Vec<Pending>> {
    let first = match deferred.pop_front() {
        Some(pending) => pending,
        None => queue.recv().await?,
    };
    let mut group = Group::default();
    let mut later = VecDeque::new();
    group.take(first, &mut later);
    while let Some(pending) = deferred.pop_front() {
        if group.full() {
            later.push_back(pending);
        } else {
            group.take(pending, &mut later);
        }
    }
    while !group.full() {
        match queue.try_recv() {
            Ok(pending) => group.take(pending, &mut later),
            Err(_) => break,
        }
    }
    *deferred = later;
    Some(group.members)
}

#[derive(Default)]
struct Group {
    members: Vec<Pending>,
    aggregates: HashSet<(&'static str, String)>,
    events: usize,
}

impl Group {
    fn full(&self) -> bool {
        self.members.len() >= GROUP_APPENDS || self.events >= GROUP_EVENTS
    }

    /// Takes `pending`, unless its aggregate is in the group already: then it waits.
    fn take(&mut self, pending: Pending, later: &mut VecDeque<Pending>) {
        let append = &pending.append;
        if !self
            .aggregates
            .insert((append.aggregate_type, append.aggregate_id.clone()))
        {
            later.push_back(pending);
            return;
        }
        self.events += append.events.len();
        self.members.push(pending);
    }
}

/// Where each appended event landed, by (aggregate type, id, sequence): its log position
/// and when it was recorded.
type Stored<'a> = HashMap<(&'a str, &'a str, i64), (i64, DateTime<Utc>)>;

/// Where `event` of `append` landed.
fn landed(
    stored: &Stored<'_>,
    append: &Append,
    event: &SerializedEvent,
) -> Option<(LogCursor, DateTime<Utc>)> {
    let key = (
        append.aggregate_type,
        append.aggregate_id.as_str(),
        to_i64(event.sequence),
    );
    let (position, recorded_at) = stored.get(&key)?;
    Some((LogCursor::at(*position), *recorded_at))
}

/// Inserts every event of the group in one statement (sealed payloads where there are).
async fn insert_events<'a>(
    conn: &mut PgConnection,
    appends: &[&'a Append],
    sealed: &[Option<Sealed>],
) -> Result<Stored<'a>, Failure> {
    let events = || appends.iter().flat_map(|a| a.events.iter());
    let payloads: Vec<&Value> = appends
        .iter()
        .zip(sealed)
        .flat_map(|(append, sealed)| match sealed {
            Some(sealed) => sealed.events.iter().collect::<Vec<_>>(),
            None => append.events.iter().map(|e| &e.payload).collect(),
        })
        .collect();
    let rows: Vec<(String, String, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                              $6::jsonb[], $7::jsonb[])
         RETURNING aggregate_type, aggregate_id, sequence, log_position, recorded_at",
    )
    .bind(
        events()
            .map(|e| e.aggregate_type.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        events()
            .map(|e| e.aggregate_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(events().map(|e| to_i64(e.sequence)).collect::<Vec<_>>())
    .bind(events().map(|e| e.event_type.as_str()).collect::<Vec<_>>())
    .bind(
        events()
            .map(|e| e.event_version.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(payloads)
    .bind(events().map(|e| &e.metadata).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    if rows.len() != events().count() {
        let lost = "the events INSERT returned fewer rows than it was given";
        return Err(Failure::Database(sqlx::Error::Protocol(lost.into())));
    }
    let keys: HashMap<(&str, &str), &'a Append> = appends
        .iter()
        .map(|a| ((a.aggregate_type, a.aggregate_id.as_str()), *a))
        .collect();
    Ok(rows
        .into_iter()
        .filter_map(|(kind, id, sequence, position, at)| {
            let append = keys.get(&(kind.as_str(), id.as_str()))?;
            Some((
                (
                    append.aggregate_type,
                    append.aggregate_id.as_str(),
                    sequence,
                ),
                (position, at),
            ))
        })
        .collect())
}

/// Writes the group's snapshots in one statement, each unless a newer one exists (which
/// means another writer appended first).
async fn write_snapshots(
    conn: &mut PgConnection,
    appends: &[&Append],
    sealed: &[Option<Sealed>],
) -> Result<(), Failure> {
    let snapshots: Vec<(&Append, &Value)> = appends
        .iter()
        .zip(sealed)
        .filter_map(|(append, sealed)| {
            let snapshot = append.snapshot.as_ref()?;
            let payload = sealed
                .as_ref()
                .and_then(|s| s.snapshot.as_ref())
                .unwrap_or(&snapshot.payload);
            Some((*append, payload))
        })
        .collect();
    if snapshots.is_empty() {
        return Ok(());
    }
    let field = |f: fn(&Append) -> i64| snapshots.iter().map(|(a, _)| f(a)).collect::<Vec<_>>();
    let written = sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence,
                                current_snapshot, payload)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::jsonb[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                current_snapshot = EXCLUDED.current_snapshot,
                payload = EXCLUDED.payload
          WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(
        snapshots
            .iter()
            .map(|(a, _)| a.aggregate_type)
            .collect::<Vec<_>>(),
    )
    .bind(
        snapshots
            .iter()
            .map(|(a, _)| a.aggregate_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(field(|a| {
        a.snapshot.as_ref().map_or(0, |s| s.last_sequence)
    }))
    .bind(field(|a| a.snapshot.as_ref().map_or(0, |s| s.counter)))
    .bind(
        snapshots
            .iter()
            .map(|(_, payload)| *payload)
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    if written.rows_affected() == snapshots.len() as u64 {
        Ok(())
    } else {
        Err(Failure::StaleSnapshot)
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::persist::SerializedEvent;
    use serde_json::Value;

    use super::*;

    fn pending(id: &str, events: usize) -> Pending {
        let event = |sequence| {
            SerializedEvent::new(
                id.into(),
                sequence,
                "Ledger".into(),
                "Deposited".into(),
                "2.0.0".into(),
                Value::Null,
                Value::Null,
            )
        };
        let append = Append {
            aggregate_type: "Ledger",
            aggregate_id: id.into(),
            events: (1..=events).map(event).collect(),
            snapshot: None,
        };
        let (reply, _) = oneshot::channel();
        Pending { append, reply }
    }

    async fn groups(queued: Vec<Pending>) -> Vec<Vec<String>> {
        let (sender, mut queue) = mpsc::channel(QUEUE);
        for pending in queued {
            assert!(sender.try_send(pending).is_ok());
        }
        drop(sender);
        let mut deferred = VecDeque::new();
        let mut groups = Vec::new();
        while let Some(group) = next_group(&mut queue, &mut deferred).await {
            groups.push(group.into_iter().map(|p| p.append.aggregate_id).collect());
        }
        groups
    }

    #[tokio::test]
    async fn an_aggregate_appears_once_per_group_and_its_appends_keep_their_order() {
        let queued = ["a", "b", "a", "c", "a", "b"].map(|id| pending(id, 1));
        assert_eq!(
            groups(queued.into()).await,
            [vec!["a", "b", "c"], vec!["a", "b"], vec!["a"]]
        );
    }

    #[tokio::test]
    async fn a_group_stops_taking_appends_at_its_size_limits() {
        let many: Vec<Pending> = (0..GROUP_APPENDS + 1)
            .map(|n| pending(&n.to_string(), 1))
            .collect();
        let sizes: Vec<usize> = groups(many).await.iter().map(Vec::len).collect();
        assert_eq!(sizes, [GROUP_APPENDS, 1]);

        let big = vec![pending("big", GROUP_EVENTS + 1), pending("next", 1)];
        assert_eq!(groups(big).await, [vec!["big"], vec!["next"]]);
    }
}
