//! Wakes this instance's log consumers when events are committed anywhere.
//!
//! One LISTEN connection per instance; each notification bumps a counter that any number of
//! consumers watch. A notification carries no data and may be lost (e.g. while reconnecting),
//! so consumers also poll on a timer: the notification only shortens latency.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "chronicle_events";

/// A handle consumers use to wait for new events.
#[derive(Clone)]
pub struct LogWaker {
    ticks: watch::Receiver<u64>,
    poll: Duration,
}

impl LogWaker {
    /// Starts listening on `pool`'s database until `shutdown`.
    pub fn start(pool: &PgPool, poll: Duration, shutdown: CancellationToken) -> Self {
        let (sender, ticks) = watch::channel(0);
        tokio::spawn(listen(pool.clone(), sender, shutdown));
        Self { ticks, poll }
    }

    /// How many wake-ups there were so far (wrapping): it changes with every notification.
    pub fn generation(&self) -> u64 {
        *self.ticks.borrow()
    }

    /// A waiter for one consumer; call [`Waiter::wait`] when the log had nothing new.
    pub fn waiter(&self) -> Waiter {
        let mut ticks = self.ticks.clone();
        ticks.mark_unchanged();
        Waiter {
            ticks,
            poll: self.poll,
        }
    }
}

/// One consumer's view of the wake-ups.
pub struct Waiter {
    ticks: watch::Receiver<u64>,
    poll: Duration,
}

impl Waiter {
    /// Returns after the next notification or the poll interval, whichever is first.
    pub async fn wait(&mut self) {
        // An error means the listener stopped (shutdown): fall back to polling.
        if tokio::time::timeout(self.poll, self.ticks.changed())
            .await
            .is_ok_and(|changed| changed.is_err())
        {
            tokio::time::sleep(self.poll).await;
        }
    }
}

async fn listen(pool: PgPool, sender: watch::Sender<u64>, shutdown: CancellationToken) {
    let wake = || sender.send_modify(|tick| *tick = tick.wrapping_add(1));
    while !shutdown.is_cancelled() {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, "cannot LISTEN for new events; polling meanwhile");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        if let Err(error) = listener.listen(CHANNEL).await {
            tracing::warn!(%error, "LISTEN failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                () = shutdown.cancelled() => return,
            }
        }
        // Events may have been committed while we were not listening.
        wake();
        loop {
            tokio::select! {
                received = listener.try_recv() => match received {
                    Ok(Some(_)) => wake(),
                    // The connection dropped; try_recv reconnects on the next call.
                    Ok(None) => wake(),
                    Err(error) => {
                        tracing::warn!(%error, "event notifications interrupted; reconnecting");
                        break;
                    }
                },
                () = shutdown.cancelled() => return,
            }
        }
    }
}
