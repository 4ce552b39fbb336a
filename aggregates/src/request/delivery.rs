//! A request's delivery rounds and attempts: what the delivery worker records and reads back.
//!
//! A round starts with each `DeliveryStarted` (the first push, or a redelivery) and has its own
//! delivery id, stable across the round's attempts, so a receiver can deduplicate repeats.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One try at handing a result to its receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryAttempt {
    /// The round's delivery id (see [`delivery_id`]).
    pub delivery_id: Uuid,
    /// The round, from 1.
    pub round: u32,
    /// The attempt within the round, from 1.
    pub number: u32,
    /// When the attempt started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
    /// The receiver's HTTP status, for webhooks that answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl DeliveryAttempt {
    /// True when the receiver took the result: no error, and a 2xx status if it had one.
    /// Only such an attempt ends its round delivered.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .status_code
                .is_none_or(|code| (200..300).contains(&code))
    }
}

/// What the worker concluded from an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptVerdict {
    /// The receiver accepted the result.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Stop: the receiver refused, or attempts or time ran out.
    GiveUp {
        /// Why.
        reason: String,
    },
}

/// Where the current delivery round stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryProgress {
    /// The current round, 0 before the first.
    pub round: u32,
    /// Attempts recorded in this round.
    pub attempts: u32,
    /// When this round started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the next attempt is due, after a failed one.
    pub retry_at: Option<DateTime<Utc>>,
}

/// The delivery id of `round` of request `request_id`: derived, so every attempt of a round,
/// before or after a restart, carries the same one.
pub fn delivery_id(request_id: Uuid, round: u32) -> Uuid {
    Uuid::new_v5(&request_id, format!("delivery/{round}").as_bytes())
}
