//! The swap: in one transaction, under the locks every writer of the live tables takes
//! (the log lock for an inline projector, then its checkpoint), the copies apply the last
//! events, take the live tables' place, and the live checkpoint moves to where they stand.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use chronicle_projections::rebuilds::{self, Rebuild, Transition};
use chronicle_projections::{checkpoint, parked, RecordedEvent};
use sqlx::{Connection, PgConnection};

use super::copies::execute;
use super::{hold, RebuildError, Run, PAGE};
use crate::store::lock_log;

/// How long a swap waits for each lock (the log lock behind appends, the live tables behind
/// their readers) before it gives up and tries again: while it waits for the tables it holds
/// the log lock, so appends wait too, and new readers queue behind it.
const LOCK_TIMEOUT: &str = "200ms";

/// The pauses between swaps that gave up on a lock: from a quarter second, doubling to five,
/// with jitter (a reader that keeps a table busy is not met in step).
pub(super) fn busy_pauses() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Whether `error` is a swap giving up on a lock (nothing changed; try again).
pub(super) fn waited_too_long(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| code == "55P03")
}

impl Run<'_> {
    /// Applies the events after the copies' position and swaps them in; the events the
    /// live tables now hold.
    pub(super) async fn swap(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
    ) -> Result<i64, RebuildError> {
        let name = self.projector.name();
        let mut tx = conn.begin().await?;
        let settings = [
            format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"),
            "SET LOCAL synchronous_commit = on".to_owned(),
        ];
        for setting in settings {
            execute(&mut tx, &setting).await?;
        }
        if super::super::inline().iter().any(|p| p.name() == name) {
            lock_log(&mut tx).await?;
        }
        checkpoint::lock(&mut tx, &[name]).await?;
        hold(&mut tx, rebuild).await?;
        // Every lock before any work: a busy table costs appends one timeout, not a tail.
        self.copies.lock_live(&mut tx).await?;
        if rebuilds::shape(&mut tx, rebuild).await? != Some(self.copies.live_shape(&mut tx).await?)
        {
            drop(tx);
            return self.reshape(conn, rebuild).await;
        }
        let mut tail = rebuild.clone();
        self.apply_tail(&mut tx, &mut tail).await?;
        self.copies.swap(&mut tx).await?;
        let installed = (tail.cursor, tail.events_applied, tail.version);
        checkpoint::install(&mut tx, name, installed).await?;
        parked::forget_halts(&mut tx, name).await?;
        rebuilds::enter(&mut tx, &mut tail, Transition::Swapped, None).await?;
        tx.commit().await?;
        *rebuild = tail;
        Ok(rebuild.events_applied)
    }

    /// Starts the rebuild again with copies of the live tables' new shape: the swap would
    /// undo what changed them (a migration) since the copies were made.
    async fn reshape(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
    ) -> Result<i64, RebuildError> {
        let mut tx = conn.begin().await?;
        hold(&mut tx, rebuild).await?;
        rebuilds::reshape(&mut tx, rebuild).await?;
        tx.commit().await?;
        tracing::warn!(
            projection = rebuild.projection,
            "the live tables' definitions changed during the rebuild; starting again"
        );
        Err(RebuildError::Reshaped(rebuild.projection.clone()))
    }

    /// Applies every committed event after the copies' position: under the swap's locks
    /// nothing the projector reads can be appended meanwhile.
    async fn apply_tail(
        &self,
        conn: &mut PgConnection,
        rebuild: &mut Rebuild,
    ) -> Result<(), RebuildError> {
        let filter = self.filter();
        loop {
            let page = self.reader.read(rebuild.cursor, &filter, PAGE).await?;
            let Some(last) = page.events.last().map(|e| e.cursor) else {
                return Ok(());
            };
            let events: Vec<&RecordedEvent> = page.events.iter().collect();
            self.projector
                .apply(&mut *conn, &events)
                .await
                .map_err(|error| match error {
                    chronicle_projections::ProjectionError::Database(error) => {
                        RebuildError::Database(error)
                    }
                    malformed => RebuildError::Failed(malformed.to_string()),
                })?;
            rebuild.cursor = last;
            rebuild.events_applied += i64::try_from(events.len()).unwrap_or(i64::MAX);
        }
    }
}
