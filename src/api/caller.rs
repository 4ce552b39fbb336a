//! Who is calling: attached to every GraphQL request by the HTTP layer.

use async_graphql::Context;

use super::ApiError;
use chronicle_aggregates::client::Role;

use crate::command::CommandContext;

/// The caller of one GraphQL request or subscription.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The actor recorded on events: the client id its key belongs to (`anonymous` under
    /// `--insecure-dev`).
    pub actor: String,
    /// From the `x-correlation-id` header, or generated.
    pub correlation_id: String,
    /// Admin or client, from the key.
    pub authority: Role,
}

impl Caller {
    /// The caller attached to this request.
    ///
    /// # Errors
    /// `UNAUTHENTICATED` when the transport attached no caller.
    pub fn from_ctx<'a>(ctx: &Context<'a>) -> Result<&'a Self, ApiError> {
        ctx.data_opt::<Self>().ok_or(ApiError::Unauthenticated)
    }

    /// Whose objects the caller sees: `None` (everyone's) for an admin, else its own.
    pub fn scope(&self) -> Option<&str> {
        match self.authority {
            Role::Admin => None,
            Role::Client => Some(self.actor.as_str()),
        }
    }

    /// Refuses a caller that is not an admin.
    ///
    /// # Errors
    /// `FORBIDDEN` for a client.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.authority {
            Role::Admin => Ok(()),
            Role::Client => Err(ApiError::AdminOnly),
        }
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
