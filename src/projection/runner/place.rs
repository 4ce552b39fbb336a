//! Where each projector of a runner stands, and what the runner does when one keeps
//! failing: it looks for the event it fails on (one event per transaction from the page
//! that failed), tries it again with backoff, and then parks it as the projector's
//! [`FailurePolicy`] says (halting, or going on past it).

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use chronicle_projections::checkpoint;
use chronicle_projections::parked;
use chronicle_projections::{FailurePolicy, LogCursor, ProjectionError, RecordedEvent};

use super::{ProjectionRunner, RunnerError};
use crate::store::lock_log;

/// Where one projector of a runner stands: its stored checkpoint, how far it has read (past
/// events it does not need, the read position runs ahead of the checkpoint), until when it
/// is paused after failing, whether it is looking for the event it fails on, and whether it
/// halted on a parked event.
#[derive(Debug)]
pub(super) struct Place {
    pub(super) stored: LogCursor,
    pub(super) read: LogCursor,
    pub(super) paused_until: Option<Instant>,
    failing: Option<Failing>,
    pub(super) halted: bool,
}

/// A projector that failed on a page, applying one event at a time until it has passed
/// that page's end.
#[derive(Debug)]
struct Failing {
    /// The failed page's end for this projector.
    until: LogCursor,
    /// The lone event it last failed on, and how many times in a row.
    at: Option<LogCursor>,
    attempts: u32,
    backoff: ExponentialBackoff,
}

/// A projector that failed on its share of a page.
pub(super) struct Failed {
    /// Its index in the runner's set.
    pub(super) index: usize,
    pub(super) error: ProjectionError,
    /// The share's event, when it had only one: the event the projector fails on.
    pub(super) lone: Option<Box<RecordedEvent>>,
    /// Where the share ended.
    pub(super) to: LogCursor,
}

impl Place {
    pub(super) fn at(cursor: LogCursor) -> Self {
        Self {
            stored: cursor,
            read: cursor,
            paused_until: None,
            failing: None,
            halted: false,
        }
    }

    /// Whether the projector takes part now (a pause that has run out ends; a halted
    /// projector waits for an operator).
    pub(super) fn resume(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
        }
        self.paused_until.is_none() && !self.halted
    }

    /// After a reset somewhere in the set: takes the `stored` place where it differs (the
    /// checkpoint moved, or the halt was resolved or begun elsewhere; a projector halted at
    /// the start of the log and rebuilt again has the same checkpoint but no halt).
    pub(super) fn reload(&mut self, stored: Self) {
        if stored.stored != self.stored || stored.halted != self.halted {
            *self = stored;
        }
    }

    /// Whether its shares are one event each, to find the event it fails on.
    pub(super) fn isolating(&self) -> bool {
        self.failing.is_some()
    }

    /// Its checkpoint moved to `cursor` by its own step; looking for a failing event ends
    /// past the page that failed.
    pub(super) fn moved_to(&mut self, cursor: LogCursor) {
        self.stored = cursor;
        self.read = cursor;
        if self.failing.as_ref().is_some_and(|f| cursor >= f.until) {
            self.failing = None;
        }
    }
}

/// The waits between attempts at an event, as `policy` sets them (doubling, unbounded in
/// number: callers count attempts themselves).
pub(in crate::projection) fn backoff(policy: FailurePolicy) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(policy.first_wait)
        .with_max_delay(policy.max_wait)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// What the runner does next about a failure.
enum Next {
    /// Wait, then try again.
    Pause(Duration),
    /// Try again one event at a time, at once.
    Isolate,
    /// Park this event (it failed every attempt).
    Park(Box<RecordedEvent>, u32),
}

impl ProjectionRunner {
    /// Handles projector `failed.index` failing: a lost database is waited out; otherwise
    /// the runner isolates the failing event, retries it with the projector's backoff, and
    /// parks it after the policy's attempts.
    pub(super) async fn on_failure(
        &self,
        places: &mut [Place],
        failed: Box<Failed>,
    ) -> Result<(), RunnerError> {
        let projector = &self.projectors[failed.index];
        let policy = projector.failure_policy();
        let name = projector.name();
        let place = &mut places[failed.index];
        let error = failed.error.to_string();
        let next = match &failed.error {
            ProjectionError::Database(db) if crate::command::is_unavailable(db) => {
                Next::Pause(self.settings.standby_retry.max(Duration::from_secs(1)))
            }
            ProjectionError::Database(_) | ProjectionError::Malformed { .. } => {
                next_after(place, policy, failed.lone, failed.to)
            }
        };
        match next {
            Next::Pause(wait) => {
                tracing::warn!(projection = name, %error, ?wait, "projector failed; trying again later, the others go on");
                place.paused_until = Some(Instant::now() + wait);
            }
            Next::Isolate => {
                tracing::warn!(projection = name, %error, "projector failed on a page; looking for the event, one at a time");
            }
            Next::Park(event, attempts) => {
                tracing::error!(projection = name, position = event.cursor.position, %error, attempts, halt = policy.halt, "projector failed on an event every time; parked");
                self.park(place, failed.index, &event, attempts, &error)
                    .await?;
            }
        }
        Ok(())
    }

    /// Parks `event` for projector `index` and, unless its policy halts, moves its
    /// checkpoint past it, in one transaction.
    async fn park(
        &self,
        place: &mut Place,
        index: usize,
        event: &RecordedEvent,
        attempts: u32,
        error: &str,
    ) -> Result<(), RunnerError> {
        let projector = &self.projectors[index];
        let halt = projector.failure_policy().halt;
        let name = projector.name();
        let mut tx = self.pool.begin().await?;
        if self.inline {
            lock_log(&mut tx).await?;
        }
        let stored = checkpoint::lock(&mut tx, &[name]).await?;
        if stored.first() != Some(&place.stored) {
            // A rebuild moved it meanwhile: start again from there.
            *place = Place::at(stored.first().copied().unwrap_or(LogCursor::START));
            return Ok(());
        }
        parked::park(&mut tx, name, event, attempts, error, halt).await?;
        if !halt {
            checkpoint::advance(&mut tx, &[(name, event.cursor, 0)]).await?;
        }
        tx.commit().await?;
        if halt {
            place.halted = true;
        } else {
            place.moved_to(event.cursor);
        }
        Ok(())
    }
}

/// After a failure that is the projector's own: isolate the event of a failed page, or
/// count one more failure of the lone event and wait or park.
fn next_after(
    place: &mut Place,
    policy: FailurePolicy,
    lone: Option<Box<RecordedEvent>>,
    to: LogCursor,
) -> Next {
    let Some(event) = lone else {
        place.failing = Some(Failing {
            until: to,
            at: None,
            attempts: 0,
            backoff: backoff(policy),
        });
        return Next::Isolate;
    };
    let failing = place.failing.get_or_insert_with(|| Failing {
        until: to,
        at: None,
        attempts: 0,
        backoff: backoff(policy),
    });
    if failing.at != Some(event.cursor) {
        failing.at = Some(event.cursor);
        failing.attempts = 0;
        failing.backoff = backoff(policy);
    }
    failing.attempts += 1;
    if failing.attempts >= policy.attempts {
        let attempts = failing.attempts;
        return Next::Park(event, attempts);
    }
    Next::Pause(failing.backoff.next().unwrap_or(policy.max_wait))
}

#[cfg(test)]
mod tests {
    use chronicle_projections::EventMetadata;

    use super::*;

    fn event(position: i64) -> RecordedEvent {
        RecordedEvent {
            cursor: LogCursor::at(position),
            metadata: EventMetadata::default(),
            sequence: 1,
            aggregate_type: "Ledger".into(),
            aggregate_id: "a".into(),
            event_type: "Opened".into(),
            event_version: "1".into(),
            payload: serde_json::json!({}),
            recorded_at: chrono::Utc::now(),
        }
    }

    const POLICY: FailurePolicy = FailurePolicy {
        attempts: 3,
        first_wait: Duration::from_millis(100),
        max_wait: Duration::from_millis(300),
        halt: true,
    };

    #[test]
    fn a_failed_page_is_searched_one_event_at_a_time_then_the_event_is_parked() {
        let mut place = Place::at(LogCursor::at(10));
        assert!(matches!(
            next_after(&mut place, POLICY, None, LogCursor::at(20)),
            Next::Isolate
        ));
        assert!(place.isolating());
        let waits: Vec<u128> = (0..2)
            .map(|_| {
                match next_after(
                    &mut place,
                    POLICY,
                    Some(Box::new(event(12))),
                    LogCursor::at(12),
                ) {
                    Next::Pause(wait) => wait.as_millis(),
                    Next::Isolate | Next::Park(..) => {
                        panic!("expected a pause before the last attempt")
                    }
                }
            })
            .collect();
        assert_eq!(waits, [100, 200]);
        match next_after(
            &mut place,
            POLICY,
            Some(Box::new(event(12))),
            LogCursor::at(12),
        ) {
            Next::Park(parked, attempts) => {
                assert_eq!((parked.cursor, attempts), (LogCursor::at(12), 3));
            }
            Next::Pause(_) | Next::Isolate => {
                panic!("expected the event parked after three attempts")
            }
        }
    }

    #[test]
    fn a_different_event_starts_its_own_count_and_searching_ends_past_the_page() {
        let mut place = Place::at(LogCursor::at(10));
        next_after(&mut place, POLICY, None, LogCursor::at(20));
        next_after(
            &mut place,
            POLICY,
            Some(Box::new(event(11))),
            LogCursor::at(11),
        );
        next_after(
            &mut place,
            POLICY,
            Some(Box::new(event(11))),
            LogCursor::at(11),
        );
        // Event 11 then applied; event 12 fails: its count starts at one.
        place.moved_to(LogCursor::at(11));
        assert!(place.isolating());
        assert!(matches!(
            next_after(&mut place, POLICY, Some(Box::new(event(12))), LogCursor::at(12)),
            Next::Pause(wait) if wait.as_millis() == 100
        ));
        place.moved_to(LogCursor::at(20));
        assert!(!place.isolating());
    }

    #[test]
    fn a_halted_place_takes_no_part_until_a_reload_finds_the_halt_resolved() {
        let mut place = Place::at(LogCursor::START);
        place.halted = true;
        assert!(!place.resume(Instant::now()));
        // Still halted in the store: the reload keeps it out.
        let mut still = Place::at(LogCursor::START);
        still.halted = true;
        place.reload(still);
        assert!(!place.resume(Instant::now()));
        // Rebuilt again (checkpoint unchanged at the start, halt forgotten): it takes part.
        place.reload(Place::at(LogCursor::START));
        assert!(place.resume(Instant::now()));
        // A projector looking for a failing event keeps looking when nothing changed.
        let mut failing = Place::at(LogCursor::at(5));
        failing.failing = Some(Failing {
            until: LogCursor::at(9),
            at: None,
            attempts: 0,
            backoff: backoff(POLICY),
        });
        failing.reload(Place::at(LogCursor::at(5)));
        assert!(failing.isolating());
    }
}
