//! Reads of `clients` and `api_keys`. The append of each `Client` event keeps both tables (a
//! trigger, same transaction), so a key is usable, or revoked, when its command returns.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// A client as created.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientRow {
    /// Its id.
    pub id: String,
    /// `client` or `admin`.
    pub role: String,
    /// The admin who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// One of a client's keys; never its hash.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    /// The key's public id.
    pub key_id: String,
    /// What the admin called it.
    pub label: String,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Every client, by id.
pub async fn list(db: impl PgExecutor<'_>) -> Result<Vec<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, created_by, created_at FROM clients ORDER BY id")
        .fetch_all(db)
        .await
}

/// The client `id`.
pub async fn get(db: impl PgExecutor<'_>, id: &str) -> Result<Option<ClientRow>, sqlx::Error> {
    sqlx::query_as("SELECT id, role, created_by, created_at FROM clients WHERE id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The keys of client `id`, oldest first.
pub async fn keys(db: impl PgExecutor<'_>, id: &str) -> Result<Vec<KeyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT key_id, label, issued_at, revoked_at FROM api_keys
          WHERE client_id = $1 ORDER BY issued_at, key_id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}
