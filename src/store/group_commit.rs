//! Group commit: the appends of commands in flight share one transaction.
//!
//! Every append takes the log lock and holds it until its transaction commits, so appends
//! are serial whatever their number; one transaction per command would pay one commit (and
//! one WAL flush) each. One task writes instead: it takes the appends waiting when its
//! previous transaction ends, writes them in one transaction (one statement for all their
//! events and snapshots, the inline projectors once) and answers each only
//! after the commit. A lone command waits for no one: the group is whatever is already
//! queued. Two appends to one aggregate never share a group (the later goes in the next:
//! per-aggregate order is arrival order). When a group fails for any reason but a lost
//! database, its appends are retried one transaction each, so that one append's conflict or
//! bad event fails that append alone.

mod grouping;
mod writes;

use std::collections::VecDeque;

use chronicle_projections::{EventMetadata, ProjectionError, RecordedEvent};
use cqrs_es::persist::PersistenceError;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::append::{to_i64, Append, Appended};
use super::inline::InlineProjectors;
use super::repository::persistence;
use crate::log::{CommittedFeed, EventFacts};
use crate::privacy::{holds_personal_data, Vault};
use grouping::next_group;
use writes::{landed, write, Sealed, Stored};

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
    /// Starts the committer over `pool`, handing what it commits to `committed`; it ends
    /// when the last `Appender` is dropped.
    pub fn start(
        pool: PgPool,
        vault: Vault,
        inline: InlineProjectors,
        committed: CommittedFeed,
    ) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        let committer = Committer {
            pool,
            vault,
            inline,
            committed,
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

    /// The failure as each of `count` appends is told it: the first gets the error itself,
    /// the others (only ever told a lost database) its description.
    fn told(self, count: usize) -> Vec<PersistenceError> {
        let message = self.message();
        let mut errors = Vec::with_capacity(count);
        errors.push(self.told_one());
        errors
            .extend((1..count).map(|_| PersistenceError::ConnectionError(message.clone().into())));
        errors
    }

    /// The failure as the one append it concerns is told it.
    fn told_one(self) -> PersistenceError {
        match self {
            Self::Database(error) => persistence(error),
            Self::Malformed(error) => PersistenceError::UnknownError(Box::new(error)),
            Self::StaleSnapshot => PersistenceError::OptimisticLockError,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Database(error) => error.to_string(),
            Self::Malformed(error) => error.to_string(),
            Self::StaleSnapshot => "a newer snapshot exists".to_owned(),
        }
    }
}

struct Committer {
    pool: PgPool,
    vault: Vault,
    inline: InlineProjectors,
    committed: CommittedFeed,
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
        if group.is_empty() {
            return;
        }
        crate::metrics::group_commit(group.len());
        let appends: Vec<&Append> = group.iter().flat_map(|p| p.append.unit()).collect();
        match self.transaction(&appends).await {
            Ok(appended) => {
                let mut appended = appended.into_iter();
                for pending in group {
                    // Each caller is answered its own append's; the appends committed with it follow.
                    let own = appended.next().unwrap_or_default();
                    appended
                        .by_ref()
                        .take(pending.append.together.len())
                        .for_each(drop);
                    let _ = pending.reply.send(Ok(own));
                }
            }
            Err(failure) if group.len() > 1 && !failure.unavailable() => {
                self.commit_each(group).await;
            }
            Err(failure) => {
                let count = group.len();
                for (pending, error) in group.into_iter().zip(failure.told(count)) {
                    let _ = pending.reply.send(Err(error));
                }
            }
        }
    }

    /// Commits each append of `group` in a transaction of its own, so that one append's
    /// failure is its own; once the database is lost, the rest are told so without trying.
    async fn commit_each(&self, group: Vec<Pending>) {
        let mut lost: Option<String> = None;
        for pending in group {
            if let Some(reason) = &lost {
                let error = PersistenceError::ConnectionError(reason.clone().into());
                let _ = pending.reply.send(Err(error));
                continue;
            }
            let appends: Vec<&Append> = pending.append.unit().collect();
            let answer = match self.transaction(&appends).await {
                Ok(appended) => Ok(appended.into_iter().next().unwrap_or_default()),
                Err(failure) => {
                    if failure.unavailable() {
                        lost = Some(failure.message());
                    }
                    Err(failure.told_one())
                }
            };
            let _ = pending.reply.send(answer);
        }
    }

    /// One transaction: seal personal data, insert every event and snapshot, apply the
    /// inline projectors, commit, and hand the events to the live log.
    async fn transaction(&self, appends: &[&Append]) -> Result<Vec<Appended>, Failure> {
        let mut tx = self.pool.begin().await?;
        let sealed = self.seal(&mut tx, appends).await?;
        let stored = write(&mut tx, appends, &sealed).await?;
        let recorded = recorded(appends, &stored);
        let positions = recorded.first().zip(recorded.last());
        let _committing = positions.map(|((first, _), (last, _))| {
            self.committed
                .committing(first.cursor.position, last.cursor.position)
        });
        self.apply_inline(&mut tx, &recorded).await?;
        tx.commit().await?;
        let appended = appends
            .iter()
            .map(|append| Appended {
                events: append
                    .events
                    .iter()
                    .filter_map(|e| {
                        let cursor = landed(&stored, append, e)?.cursor();
                        Some((to_i64(e.sequence), cursor))
                    })
                    .collect(),
            })
            .collect();
        count_appended(appends);
        self.committed.publish(recorded);
        Ok(appended)
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

    /// Applies the inline projectors to the group's events of the types they read.
    async fn apply_inline(
        &self,
        conn: &mut PgConnection,
        recorded: &[(RecordedEvent, EventFacts)],
    ) -> Result<(), Failure> {
        let wanted: Vec<&RecordedEvent> = recorded
            .iter()
            .map(|(event, _)| event)
            .filter(|event| self.inline.want(&event.aggregate_type))
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        Ok(self.inline.apply(conn, &wanted).await?)
    }
}

/// Counts the committed events of `appends` by aggregate type.
fn count_appended(appends: &[&Append]) {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for append in appends.iter().filter(|a| !a.events.is_empty()) {
        match counts
            .iter_mut()
            .find(|(kind, _)| *kind == append.aggregate_type)
        {
            Some((_, count)) => *count += append.events.len(),
            None => counts.push((append.aggregate_type, append.events.len())),
        }
    }
    for (aggregate_type, count) in counts {
        crate::metrics::events_appended(aggregate_type, count);
    }
}

/// The group's events as recorded, open, in log order, each with its facts.
fn recorded(appends: &[&Append], stored: &Stored<'_>) -> Vec<(RecordedEvent, EventFacts)> {
    let mut recorded: Vec<(RecordedEvent, EventFacts)> = appends
        .iter()
        .flat_map(|append| append.events.iter().map(move |e| (append, e)))
        .filter_map(|(append, e)| {
            let landed = landed(stored, append, e)?;
            let event = RecordedEvent {
                cursor: landed.cursor(),
                metadata: EventMetadata::from_value(&e.metadata),
                sequence: to_i64(e.sequence),
                aggregate_type: e.aggregate_type.clone(),
                aggregate_id: e.aggregate_id.clone(),
                event_type: e.event_type.clone(),
                event_version: e.event_version.clone(),
                payload: e.payload.clone(),
                recorded_at: landed.at,
            };
            Some((event, landed.facts.clone()))
        })
        .collect();
    recorded.sort_unstable_by_key(|(event, _)| event.cursor.position);
    recorded
}
