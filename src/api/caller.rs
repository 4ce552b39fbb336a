//! Who is calling: attached to every GraphQL request by the HTTP layer.

use async_graphql::Context;

use super::ApiError;
use crate::command::{Authority, CommandContext};

/// The caller of one GraphQL request or subscription.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The actor recorded on events. Until API keys exist every caller is `anonymous`.
    pub actor: String,
    /// From the `x-correlation-id` header, or generated.
    pub correlation_id: String,
    /// Admin or client. Until API keys exist the anonymous caller is an admin.
    pub authority: Authority,
}

impl Caller {
    /// The caller attached to this request.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when the transport attached no caller.
    pub fn from_ctx<'a>(ctx: &Context<'a>) -> Result<&'a Self, ApiError> {
        ctx.data_opt::<Self>().ok_or(ApiError::Unauthenticated)
    }

    /// The metadata of a command this caller sends.
    pub fn command_context(&self) -> CommandContext {
        CommandContext {
            actor: self.actor.clone(),
            correlation_id: self.correlation_id.clone(),
            causation_id: None,
        }
    }
}
