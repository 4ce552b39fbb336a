//! What a mutation that runs one command returns, and its idempotency key argument.

use std::future::Future;

use async_graphql::{Context, SimpleObject};
use serde::Serialize;

use super::{ApiError, Caller};
use crate::command::{CommandContext, CommandError, CommandReceipt, IdempotencyKey};
use crate::llm::LlmActions;

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

/// The shape of every owner-action mutation: identify the caller, take the idempotency key
/// (fingerprinted with the `arguments`), run one action, return its outcome.
///
/// # Errors
/// `UNAUTHENTICATED`, `VALIDATION` (key), or the action's error.
pub(crate) async fn run_action<'a, Fut>(
    ctx: &Context<'a>,
    idempotency_key: Option<String>,
    arguments: &impl Serialize,
    action: impl FnOnce(&'a LlmActions, CommandContext, Option<IdempotencyKey>) -> Fut,
) -> Result<CommandOutcome, ApiError>
where
    Fut: Future<Output = Result<CommandReceipt, CommandError>>,
{
    let caller = Caller::from_ctx(ctx)?;
    let key = idempotency(idempotency_key, arguments)?;
    let actions = ctx.data_unchecked::<LlmActions>();
    Ok(action(actions, caller.command_context(), key).await?.into())
}
