//! A live tail of the log: catch up from a cursor, then follow new commits, forever.

use std::collections::VecDeque;
use std::time::Duration;

use chronicle_projections::{LogCursor, RecordedEvent};
use futures::Stream;

use super::waker::Waiter;
use super::{LogFilter, LogReader, LogWaker};
use crate::metrics::SubscriptionGuard;

const PAGE: u32 = 500;
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

struct State {
    reader: LogReader,
    filter: LogFilter,
    cursor: LogCursor,
    buffered: VecDeque<RecordedEvent>,
    waiter: Waiter,
    /// Counts this tail among the open subscriptions while it lives.
    _open: SubscriptionGuard,
}

/// Every event after `after` that matches `filter`, each exactly once and in log order.
///
/// The stream is pulled: a slow consumer only delays the next page read, so memory stays at
/// one page whatever the lag. Database errors are logged and retried, never ended on, so a
/// subscriber survives a database restart.
pub fn tail(
    reader: LogReader,
    waker: &LogWaker,
    after: LogCursor,
    filter: LogFilter,
) -> impl Stream<Item = RecordedEvent> + Send + 'static {
    let state = State {
        reader,
        filter,
        cursor: after,
        buffered: VecDeque::new(),
        waiter: waker.waiter(),
        _open: SubscriptionGuard::open(),
    };
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.buffered.pop_front() {
                return Some((event, state));
            }
            match state.reader.read(state.cursor, &state.filter, PAGE).await {
                Ok(page) => {
                    state.cursor = page.next_cursor(state.cursor);
                    if page.events.is_empty() {
                        state.waiter.wait().await;
                    }
                    state.buffered.extend(page.events);
                }
                Err(error) => {
                    tracing::warn!(%error, cursor = %state.cursor, "log tail read failed; retrying");
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                }
            }
        }
    })
}
