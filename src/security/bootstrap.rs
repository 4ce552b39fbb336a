//! The first admin key: installed on start while the client `admin` has none.

use anyhow::Context;
use chronicle_aggregates::client::{Client, ClientCommand, Role};
use chronicle_aggregates::ErrorCode;
use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgPool};

use super::{KeyHasher, NewKey};
use crate::command::{CommandContext, CommandError, Commands};

/// The bootstrap admin's client id.
pub const ADMIN_CLIENT: &str = "admin";

/// Installs the bootstrap admin key (`configured`, or a new one printed once to stderr) when
/// the client `admin` has never had a key. Instances starting together take turns under an
/// advisory lock: exactly one key is ever issued.
///
/// # Errors
/// A malformed configured key, or the database failed.
pub async fn bootstrap_admin(
    commands: &Commands,
    pool: &PgPool,
    hasher: &KeyHasher,
    configured: Option<&SecretString>,
) -> anyhow::Result<()> {
    if admin_has_key(pool).await? {
        return Ok(());
    }
    // A connection of its own holds the turn; closing it (or losing it) ends the turn.
    let mut turn = pool.acquire().await?.detach();
    sqlx::query("SELECT pg_advisory_lock(hashtextextended('chronicle.bootstrap', 0))")
        .execute(&mut turn)
        .await?;
    let installed = install(commands, pool, hasher, configured).await;
    turn.close().await?;
    installed
}

/// Installs the key unless an instance that had the turn before did.
async fn install(
    commands: &Commands,
    pool: &PgPool,
    hasher: &KeyHasher,
    configured: Option<&SecretString>,
) -> anyhow::Result<()> {
    if admin_has_key(pool).await? {
        return Ok(());
    }
    let key = match configured {
        Some(token) => NewKey::parse(token).context(
            "CHRONICLE_BOOTSTRAP_ADMIN_KEY is not a Chronicle key; make one with `chronicle keys new`",
        )?,
        None => NewKey::generate(),
    };
    let context = CommandContext::system("bootstrap");
    let create = ClientCommand::Create {
        role: Role::Admin,
        by: "bootstrap".into(),
        at: Utc::now(),
    };
    let issue = ClientCommand::IssueKey {
        key_id: key.key_id.clone(),
        hash: hasher.hash(key.secret()),
        label: "bootstrap".into(),
        by: "bootstrap".into(),
        at: Utc::now(),
    };
    for command in [create, issue] {
        match commands
            .execute::<Client>(&context, ADMIN_CLIENT, command, &(), None)
            .await
        {
            Ok(_) => {}
            // Created by an earlier start that stopped before issuing: go on to issue.
            Err(CommandError::Rejected {
                code: ErrorCode::Conflict,
                ..
            }) => {}
            // Another instance starting at once got there first: its key stands.
            Err(_) if admin_has_key(pool).await? => return Ok(()),
            Err(error) => return Err(error).context("installing the bootstrap admin key"),
        }
    }
    if configured.is_none() {
        eprintln!(
            "\n*** Chronicle bootstrap admin key (shown once, store it now):\n***   {}\n",
            key.token.expose_secret()
        );
    }
    tracing::info!(client = ADMIN_CLIENT, key_id = %key.key_id, "bootstrap admin key installed");
    Ok(())
}

async fn admin_has_key(pool: &PgPool) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE client_id = $1)")
        .bind(ADMIN_CLIENT)
        .fetch_one(pool)
        .await
}
