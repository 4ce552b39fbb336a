//! The position of an event in the global log, and its opaque wire form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a consumer stands in the global log: the (transaction id, position) of the last event
/// it has seen. The log is ordered by this pair, which, unlike the position alone, never lets a
/// later commit appear behind a reader (see `src/log/reader.rs`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogCursor {
    /// The writing transaction's id (`xid8`, widened to i64: PostgreSQL's epoch-extended ids
    /// stay far below 2^63).
    pub transaction_id: i64,
    /// The event's global position.
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub const START: Self = Self {
        transaction_id: 0,
        position: 0,
    };
}

const PREFIX: &str = "c1.";

/// Clients see cursors as `c1.<transaction id>.<position>`: opaque by contract, readable in logs.
impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}.{}", self.transaction_id, self.position)
    }
}

/// A cursor string that this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a log cursor issued by this service")]
pub struct CursorError(String);

impl FromStr for LogCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || CursorError(text.chars().take(64).collect());
        let rest = text.strip_prefix(PREFIX).ok_or_else(invalid)?;
        let (transaction, position) = rest.split_once('.').ok_or_else(invalid)?;
        let transaction_id: i64 = transaction.parse().map_err(|_| invalid())?;
        let position: i64 = position.parse().map_err(|_| invalid())?;
        if transaction_id < 0 || position < 0 {
            return Err(invalid());
        }
        Ok(Self {
            transaction_id,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::LogCursor;

    #[test]
    fn a_cursor_survives_its_wire_form() {
        let cursor = LogCursor {
            transaction_id: 7_000_123,
            position: 42,
        };
        assert_eq!(cursor.to_string().parse::<LogCursor>(), Ok(cursor));
    }

    #[test]
    fn foreign_or_malformed_cursors_are_rejected() {
        for text in [
            "", "c1.", "c1.1", "c1.a.2", "c1.1.-2", "c2.1.2", "c1.1.2.3", "1.2",
        ] {
            assert!(text.parse::<LogCursor>().is_err(), "{text} was accepted");
        }
    }

    #[test]
    fn cursors_order_by_transaction_then_position() {
        let early_tx = LogCursor {
            transaction_id: 1,
            position: 900,
        };
        let late_tx = LogCursor {
            transaction_id: 2,
            position: 5,
        };
        assert!(early_tx < late_tx);
    }
}
