//! Clients and their API keys over GraphQL: created, issued, revoked and rotated by admins;
//! `me` tells any caller who its key says it is.

use async_graphql::{ComplexObject, Context, Enum, Object, SimpleObject};
use chronicle_aggregates::client::{is_client_id, Client, ClientCommand, Role};
use chronicle_projections::clients::{self, ClientRow, KeyRow};
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use sqlx::PgPool;

use super::outcome::CommandOutcome;
use super::{ApiError, Caller};
use crate::command::Commands;
use crate::delivery::WebhookSecrets;
use crate::security::{KeyHasher, KnownKeys, NewKey};

/// What a client's keys may do.
#[derive(Enum, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientRole {
    /// Its own objects only.
    Client,
    /// Every object, and the admin-only actions.
    Admin,
}

impl From<ClientRole> for Role {
    fn from(role: ClientRole) -> Self {
        match role {
            ClientRole::Client => Self::Client,
            ClientRole::Admin => Self::Admin,
        }
    }
}

impl From<Role> for ClientRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Client => Self::Client,
            Role::Admin => Self::Admin,
        }
    }
}

/// A client of the API.
#[derive(SimpleObject)]
#[graphql(complex, name = "Client")]
pub(crate) struct ClientView {
    /// Its id: the actor on its events and the owner of what it creates.
    id: String,
    /// What its keys may do.
    role: ClientRole,
    /// The admin who created it.
    created_by: String,
    /// When.
    created_at: DateTime<Utc>,
}

impl From<ClientRow> for ClientView {
    fn from(row: ClientRow) -> Self {
        Self {
            role: Role::parse(&row.role).into(),
            id: row.id,
            created_by: row.created_by,
            created_at: row.created_at,
        }
    }
}

#[ComplexObject]
impl ClientView {
    /// Its keys, revoked ones included; never a key's secret or hash.
    async fn keys(&self, ctx: &Context<'_>) -> Result<Vec<ApiKeyView>, ApiError> {
        let rows = clients::keys(ctx.data_unchecked::<PgPool>(), &self.id).await?;
        Ok(rows.into_iter().map(ApiKeyView::from).collect())
    }
}

/// One API key, by its public id.
#[derive(SimpleObject)]
#[graphql(name = "ApiKey")]
pub(crate) struct ApiKeyView {
    /// The key's public id (the part after `chr_`).
    key_id: String,
    /// What the admin called it.
    label: String,
    /// When it was issued.
    issued_at: DateTime<Utc>,
    /// When it was revoked.
    revoked_at: Option<DateTime<Utc>>,
}

impl From<KeyRow> for ApiKeyView {
    fn from(row: KeyRow) -> Self {
        Self {
            key_id: row.key_id,
            label: row.label,
            issued_at: row.issued_at,
            revoked_at: row.revoked_at,
        }
    }
}

/// A key just issued: the only time its secret is shown.
#[derive(SimpleObject)]
pub(crate) struct IssuedKey {
    /// Whose key it is.
    client_id: String,
    /// Its public id.
    key_id: String,
    /// The whole key, for `Authorization: Bearer`. Store it now: it is not kept.
    key: String,
    /// The command's outcome.
    outcome: CommandOutcome,
}

/// A webhook secret just rotated.
#[derive(SimpleObject)]
pub(crate) struct RotatedSecret {
    /// Whose secret it is.
    client_id: String,
    /// The new signing secret; webhooks are signed with it from now on.
    secret: String,
    /// The command's outcome.
    outcome: CommandOutcome,
}

/// Who the caller is.
#[derive(SimpleObject)]
pub(crate) struct Me {
    /// The caller's client id (`anonymous` under `--insecure-dev`).
    client_id: String,
    /// What the caller may do.
    role: ClientRole,
}

/// Client queries.
#[derive(Default)]
pub(crate) struct ClientQuery;

#[Object]
impl ClientQuery {
    /// Who the presented key belongs to.
    async fn me(&self, ctx: &Context<'_>) -> Result<Me, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        Ok(Me {
            client_id: caller.actor.clone(),
            role: caller.authority.into(),
        })
    }

    /// Every client (admin). Errors: `FORBIDDEN`.
    async fn clients(&self, ctx: &Context<'_>) -> Result<Vec<ClientView>, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        let rows = clients::list(ctx.data_unchecked::<PgPool>()).await?;
        Ok(rows.into_iter().map(ClientView::from).collect())
    }

    /// One client (admin). Errors: `FORBIDDEN`, `NOT_FOUND`.
    async fn client(&self, ctx: &Context<'_>, id: String) -> Result<ClientView, ApiError> {
        Caller::from_ctx(ctx)?.require_admin()?;
        clients::get(ctx.data_unchecked::<PgPool>(), &id)
            .await?
            .map(ClientView::from)
            .ok_or(ApiError::NotFound("client"))
    }
}

/// Client mutations (admin).
#[derive(Default)]
pub(crate) struct ClientMutation;

#[Object]
impl ClientMutation {
    /// Creates a client. Its id is 1–64 lowercase letters, digits, `-` or `_`.
    /// Errors: `FORBIDDEN`, `VALIDATION`, `CONFLICT` (the id is taken).
    async fn create_client(
        &self,
        ctx: &Context<'_>,
        id: String,
        #[graphql(default_with = "ClientRole::Client")] role: ClientRole,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        if !is_client_id(&id) {
            return Err(ApiError::Validation(
                "id must be 1 to 64 lowercase letters, digits, '-' or '_' (not `system` or `anonymous`)"
                    .into(),
            ));
        }
        let command = ClientCommand::Create {
            role: role.into(),
            by: caller.actor.clone(),
            at: Utc::now(),
        };
        run(ctx, caller, &id, command).await
    }

    /// Issues a key to a client; the key is in the answer and nowhere else.
    /// Errors: `FORBIDDEN`, `NOT_FOUND`, `VALIDATION` (label, too many keys).
    async fn issue_key(
        &self,
        ctx: &Context<'_>,
        client_id: String,
        #[graphql(default)] label: String,
    ) -> Result<IssuedKey, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        let key = NewKey::generate();
        let command = ClientCommand::IssueKey {
            key_id: key.key_id.clone(),
            hash: ctx.data_unchecked::<KeyHasher>().hash(key.secret()),
            label,
            by: caller.actor.clone(),
            at: Utc::now(),
        };
        let outcome = run(ctx, caller, &client_id, command).await?;
        Ok(IssuedKey {
            client_id,
            key_id: key.key_id,
            key: key.token.expose_secret().to_owned(),
            outcome,
        })
    }

    /// Revokes a key: it stops working when this returns.
    /// Errors: `FORBIDDEN`, `NOT_FOUND`, `INVALID_TRANSITION` (revoked already).
    async fn revoke_key(
        &self,
        ctx: &Context<'_>,
        client_id: String,
        key_id: String,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        let command = ClientCommand::RevokeKey {
            key_id: key_id.clone(),
            by: caller.actor.clone(),
            at: Utc::now(),
        };
        let outcome = run(ctx, caller, &client_id, command).await?;
        // Other instances forget it when the revocation reaches them through the log.
        ctx.data_unchecked::<KnownKeys>().forget(&key_id);
        Ok(outcome)
    }

    /// Replaces a client's webhook signing secret and returns the new one.
    /// Errors: `FORBIDDEN`, `NOT_FOUND`.
    async fn rotate_webhook_secret(
        &self,
        ctx: &Context<'_>,
        client_id: String,
    ) -> Result<RotatedSecret, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        caller.require_admin()?;
        let command = ClientCommand::RotateWebhookSecret {
            by: caller.actor.clone(),
            at: Utc::now(),
        };
        let outcome = run(ctx, caller, &client_id, command).await?;
        let secret = ctx
            .data_unchecked::<std::sync::Arc<WebhookSecrets>>()
            .for_owner(&client_id)
            .await?;
        Ok(RotatedSecret {
            client_id,
            secret,
            outcome,
        })
    }
}

async fn run(
    ctx: &Context<'_>,
    caller: &Caller,
    client_id: &str,
    command: ClientCommand,
) -> Result<CommandOutcome, ApiError> {
    if !is_client_id(client_id) {
        return Err(ApiError::NotFound("client"));
    }
    let receipt = ctx
        .data_unchecked::<Commands>()
        .execute::<Client>(&caller.command_context(), client_id, command, &(), None)
        .await?;
    Ok(receipt.into())
}
