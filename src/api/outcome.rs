//! What a mutation that runs one command returns, and its idempotency key argument.

use async_graphql::SimpleObject;
use serde::Serialize;

use super::ApiError;
use crate::command::{CommandReceipt, IdempotencyKey};

/// The outcome of a command.
#[derive(SimpleObject)]
pub(crate) struct CommandOutcome {
    /// The aggregate's type, e.g. `Batch`.
    aggregate_type: String,
    /// The aggregate's id.
    aggregate_id: String,
    /// Its version after the command.
    version: i64,
    /// Where the command's last event sits in the global log (for `events(after:)`).
    cursor: Option<String>,
}

impl From<CommandReceipt> for CommandOutcome {
    fn from(receipt: CommandReceipt) -> Self {
        Self {
            aggregate_type: receipt.aggregate_type,
            aggregate_id: receipt.aggregate_id,
            version: receipt.version,
            cursor: receipt.cursor.map(|cursor| cursor.to_string()),
        }
    }
}

/// The idempotency key of a mutation, fingerprinted with its arguments.
///
/// # Errors
/// `VALIDATION` when the key is empty or longer than 200 characters.
pub(crate) fn idempotency(
    key: Option<String>,
    arguments: &impl Serialize,
) -> Result<Option<IdempotencyKey>, ApiError> {
    Ok(key
        .map(|key| IdempotencyKey::new(key, arguments))
        .transpose()?)
}
