//! What one delivery attempt came to, and what follows from it under the retry policy.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chronicle_aggregates::request::AttemptVerdict;
use chrono::{DateTime, Utc};

/// How a receiver (or the broker) answered one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted: 2xx, or confirmed by the broker.
    Accepted {
        /// The HTTP status, for webhooks.
        status_code: Option<u16>,
    },
    /// Worth retrying: timeouts, connection errors, 408, 429, 5xx, broker trouble.
    Transient {
        /// The HTTP status, if the receiver answered.
        status_code: Option<u16>,
        /// What happened.
        error: String,
        /// The receiver's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Refused for good: any other status (the receiver rejected the result).
    Rejected {
        /// The HTTP status.
        status_code: Option<u16>,
        /// What happened.
        error: String,
    },
}

impl SendOutcome {
    /// The HTTP status, if any.
    pub fn status_code(&self) -> Option<u16> {
        match self {
            Self::Accepted { status_code }
            | Self::Transient { status_code, .. }
            | Self::Rejected { status_code, .. } => *status_code,
        }
    }

    /// The error text, unless accepted.
    pub fn error(&self) -> Option<&str> {
        match self {
            Self::Accepted { .. } => None,
            Self::Transient { error, .. } | Self::Rejected { error, .. } => Some(error),
        }
    }
}

/// When to retry and when to give up.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts per round.
    pub max_attempts: u32,
    /// No attempt starts later than this after its round began.
    pub deadline: Duration,
    /// The first retry delay; it doubles per attempt, plus up to 100% jitter.
    pub min_delay: Duration,
    /// The longest delay before jitter.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The verdict on attempt `number` of a round that began at `round_started`.
    pub fn verdict(
        &self,
        outcome: &SendOutcome,
        number: u32,
        round_started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> AttemptVerdict {
        let (error, retry_after) = match outcome {
            SendOutcome::Accepted { .. } => return AttemptVerdict::Delivered,
            SendOutcome::Rejected { error, .. } => {
                return AttemptVerdict::GiveUp {
                    reason: format!("the receiver refused the result: {error}"),
                }
            }
            SendOutcome::Transient {
                error, retry_after, ..
            } => (error, *retry_after),
        };
        if number >= self.max_attempts {
            return AttemptVerdict::GiveUp {
                reason: format!("gave up after {number} attempts; last: {error}"),
            };
        }
        let delay = self.delay(number).max(retry_after.unwrap_or_default());
        let later = |from: DateTime<Utc>, by: Duration| {
            chrono::Duration::from_std(by)
                .ok()
                .and_then(|by| from.checked_add_signed(by))
        };
        let deadline = later(round_started, self.deadline);
        let retry_at = later(now, delay).filter(|at| deadline.is_none_or(|end| *at <= end));
        let Some(retry_at) = retry_at else {
            return AttemptVerdict::GiveUp {
                reason: format!("delivery deadline passed after {number} attempts; last: {error}"),
            };
        };
        AttemptVerdict::RetryAt(retry_at)
    }

    /// The jittered delay after failed attempt `number` (from 1).
    fn delay(&self, number: u32) -> Duration {
        ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(number.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chronicle_aggregates::request::AttemptVerdict;
    use chrono::{TimeZone, Utc};

    use super::{RetryPolicy, SendOutcome};

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 4,
        deadline: Duration::from_secs(3600),
        min_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    fn transient() -> SendOutcome {
        SendOutcome::Transient {
            status_code: Some(503),
            error: "HTTP 503".into(),
            retry_after: None,
        }
    }

    #[test]
    fn accepted_is_delivered_and_rejected_gives_up_at_once() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        let accepted = SendOutcome::Accepted {
            status_code: Some(204),
        };
        assert_eq!(
            POLICY.verdict(&accepted, 1, start, start),
            AttemptVerdict::Delivered
        );
        let rejected = SendOutcome::Rejected {
            status_code: Some(400),
            error: "HTTP 400".into(),
        };
        assert!(matches!(
            POLICY.verdict(&rejected, 1, start, start),
            AttemptVerdict::GiveUp { .. }
        ));
    }

    #[test]
    fn transient_failures_back_off_exponentially_with_jitter_until_the_last_attempt() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        for number in 1..=3 {
            let AttemptVerdict::RetryAt(at) = POLICY.verdict(&transient(), number, start, start)
            else {
                panic!("attempt {number} should retry");
            };
            let base = 1_i64 << (number - 1);
            let waited = (at - start).num_milliseconds();
            assert!(
                (base * 1000..=base * 2000).contains(&waited),
                "attempt {number}: {waited} ms"
            );
        }
        assert!(matches!(
            POLICY.verdict(&transient(), 4, start, start),
            AttemptVerdict::GiveUp { .. }
        ));
    }

    #[test]
    fn retry_after_is_honoured_and_the_deadline_ends_the_round() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        let limited = SendOutcome::Transient {
            status_code: Some(429),
            error: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(30)),
        };
        let AttemptVerdict::RetryAt(at) = POLICY.verdict(&limited, 1, start, start) else {
            panic!("should retry");
        };
        assert!((at - start).num_seconds() >= 30);
        let late = start + chrono::Duration::minutes(59) + chrono::Duration::seconds(59);
        assert!(matches!(
            POLICY.verdict(&transient(), 1, start, late),
            AttemptVerdict::GiveUp { .. }
        ));
    }

    #[test]
    fn absurd_waits_and_deadlines_give_up_instead_of_overflowing() {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap();
        let forever = SendOutcome::Transient {
            status_code: Some(503),
            error: "HTTP 503".into(),
            retry_after: Some(Duration::from_secs(u64::MAX)),
        };
        assert!(matches!(
            POLICY.verdict(&forever, 1, start, start),
            AttemptVerdict::GiveUp { .. }
        ));
        let endless = RetryPolicy {
            deadline: Duration::from_secs(u64::MAX),
            ..POLICY
        };
        assert!(matches!(
            endless.verdict(&transient(), 1, start, start),
            AttemptVerdict::RetryAt(_)
        ));
    }
}
