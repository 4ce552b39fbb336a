//! DICOM servers over GraphQL: registering (admin), removing (admin), listing.

use async_graphql::{Context, Enum, InputObject, Object, SimpleObject};
use chronicle_aggregates::dicom_server::{ServerAuth, ServerSpec};
use chronicle_projections::transfers::{self, ServerRow};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::outcome::CommandOutcome;
use super::{ApiError, Caller};
use crate::reads::Reads;
use crate::transfer::TransferActions;

/// How Chronicle authenticates to a DICOM server.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum AuthKind {
    /// HTTP basic; the variable holds `user:password`.
    Basic,
    /// Bearer token; the variable holds the token.
    Bearer,
}

/// Credentials by reference: the value stays in the server's environment.
#[derive(InputObject, Serialize)]
pub(crate) struct ServerAuthInput {
    /// Basic or bearer.
    kind: AuthKind,
    /// The environment variable holding the credentials.
    secret_env: String,
}

/// A DICOM server's registration.
#[derive(InputObject, Serialize)]
pub(crate) struct DicomServerInput {
    /// Its name: 1–64 letters, digits, `-`, `_`, `.`.
    name: String,
    /// DICOMweb base URL, e.g. `http://pacs:8042/dicom-web`.
    base_url: String,
    /// Credentials, if the server needs them.
    auth: Option<ServerAuthInput>,
}

/// A DICOM server as registered.
#[derive(SimpleObject)]
pub(crate) struct DicomServerView {
    /// Its name.
    name: String,
    /// DICOMweb base URL.
    base_url: String,
    /// `basic`, `bearer`, or none.
    auth_kind: Option<String>,
    /// The variable holding its credentials.
    auth_secret_env: Option<String>,
    /// Registered.
    registered_at: DateTime<Utc>,
    /// Last changed.
    updated_at: DateTime<Utc>,
}

impl From<ServerRow> for DicomServerView {
    fn from(row: ServerRow) -> Self {
        Self {
            name: row.name,
            base_url: row.base_url,
            auth_kind: row.auth_kind,
            auth_secret_env: row.auth_secret_env,
            registered_at: row.registered_at,
            updated_at: row.updated_at,
        }
    }
}

/// DICOM server queries.
#[derive(Default)]
pub(crate) struct DicomServerQuery;

#[Object]
impl DicomServerQuery {
    /// Registered DICOM servers.
    async fn dicom_servers(&self, ctx: &Context<'_>) -> Result<Vec<DicomServerView>, ApiError> {
        Caller::from_ctx(ctx)?;
        let rows = transfers::servers(&ctx.data_unchecked::<Reads>().pool).await?;
        Ok(rows.into_iter().map(DicomServerView::from).collect())
    }
}

/// DICOM server mutations.
#[derive(Default)]
pub(crate) struct DicomServerMutation;

#[Object]
impl DicomServerMutation {
    /// Registers (or updates) a DICOM server (admin). Errors: `FORBIDDEN`, `VALIDATION`.
    async fn register_dicom_server(
        &self,
        ctx: &Context<'_>,
        input: DicomServerInput,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let spec = ServerSpec {
            base_url: input.base_url,
            auth: input.auth.map(|auth| match auth.kind {
                AuthKind::Basic => ServerAuth::Basic {
                    secret_env: auth.secret_env,
                },
                AuthKind::Bearer => ServerAuth::Bearer {
                    secret_env: auth.secret_env,
                },
            }),
        };
        let actions = ctx.data_unchecked::<TransferActions>();
        Ok(actions
            .register_server(
                &caller.command_context(),
                caller.authority,
                input.name,
                spec,
            )
            .await?
            .into())
    }

    /// Removes a DICOM server (admin): new jobs may no longer name it. Errors: `FORBIDDEN`,
    /// `NOT_FOUND`.
    async fn remove_dicom_server(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> Result<CommandOutcome, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let actions = ctx.data_unchecked::<TransferActions>();
        Ok(actions
            .remove_server(&caller.command_context(), caller.authority, &name)
            .await?
            .into())
    }
}
