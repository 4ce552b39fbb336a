//! The position of an event in the global log, and its opaque wire form.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a consumer stands in the global log: the position of the last event it has seen.
/// Positions are handed out in commit order (see the `log_positions_in_commit_order`
/// migration), so no later commit can appear behind a reader.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct LogCursor {
    /// The event's log position.
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub const START: Self = Self { position: 0 };

    /// The cursor of the event at `position`.
    pub const fn at(position: i64) -> Self {
        Self { position }
    }
}

const PREFIX: &str = "c2.";
const LEGACY_PREFIX: &str = "c1.";

/// Clients see cursors as `c2.<position>`: opaque by contract, readable in logs.
impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}{}", self.position)
    }
}

/// A cursor string that this server did not issue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a log cursor issued by this service")]
pub struct CursorError(String);

fn invalid(text: &str) -> CursorError {
    CursorError(text.chars().take(64).collect())
}

fn non_negative(text: &str, whole: &str) -> Result<i64, CursorError> {
    text.parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| invalid(whole))
}

impl FromStr for LogCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rest = text.strip_prefix(PREFIX).ok_or_else(|| invalid(text))?;
        Ok(Self::at(non_negative(rest, text)?))
    }
}

/// A cursor as a client sends it: the current form, or one issued before log positions
/// followed commit order (`c1.<transaction id>.<position>`), which the log reader resolves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCursor {
    /// A current cursor.
    Current(LogCursor),
    /// A cursor of the old (transaction id, position) order.
    Legacy {
        /// The writing transaction's id.
        transaction_id: i64,
        /// The event's allocation-order position.
        position: i64,
    },
}

impl FromStr for ClientCursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(rest) = text.strip_prefix(LEGACY_PREFIX) else {
            return text.parse().map(Self::Current);
        };
        let (transaction, position) = rest.split_once('.').ok_or_else(|| invalid(text))?;
        Ok(Self::Legacy {
            transaction_id: non_negative(transaction, text)?,
            position: non_negative(position, text)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ClientCursor, LogCursor};

    #[test]
    fn a_cursor_survives_its_wire_form() {
        let cursor = LogCursor::at(42);
        assert_eq!(cursor.to_string(), "c2.42");
        assert_eq!(cursor.to_string().parse::<LogCursor>(), Ok(cursor));
        assert_eq!(
            "c2.42".parse::<ClientCursor>(),
            Ok(ClientCursor::Current(cursor))
        );
    }

    #[test]
    fn cursors_of_the_old_order_are_recognized_for_resolving() {
        assert_eq!(
            "c1.7000123.42".parse::<ClientCursor>(),
            Ok(ClientCursor::Legacy {
                transaction_id: 7_000_123,
                position: 42
            })
        );
        assert!("c1.7000123.42".parse::<LogCursor>().is_err());
    }

    #[test]
    fn foreign_or_malformed_cursors_are_rejected() {
        for text in [
            "", "c2.", "c2.a", "c2.-2", "c2.1.2", "c1.", "c1.1", "c1.a.2", "c1.1.-2", "c3.1",
            "c1.1.2.3", "1.2",
        ] {
            assert!(text.parse::<ClientCursor>().is_err(), "{text} was accepted");
        }
    }
}
