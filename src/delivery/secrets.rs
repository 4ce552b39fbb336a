//! Per-owner webhook signing secrets: created on first use, kept in `webhook_secrets`, read
//! on every use (a rotation by any instance takes effect at once everywhere).

use rand::RngCore;
use sqlx::PgPool;

/// The owners' signing secrets.
pub struct WebhookSecrets {
    pool: PgPool,
}

impl WebhookSecrets {
    /// Secrets stored in `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The secret `owner`'s webhooks are signed with, created (32 random bytes) if missing.
    ///
    /// # Errors
    /// Any database error.
    pub async fn for_owner(&self, owner: &str) -> Result<String, sqlx::Error> {
        if let Some(secret) = self.stored(owner).await? {
            return Ok(secret);
        }
        let mut bytes = [0_u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let fresh = format!("whsec_{}", hex::encode(bytes));
        // Concurrent first uses agree: the first insert wins and every caller reads it.
        sqlx::query(
            "INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2)
             ON CONFLICT (owner) DO NOTHING",
        )
        .bind(owner)
        .bind(fresh)
        .execute(&self.pool)
        .await?;
        self.stored(owner).await?.ok_or(sqlx::Error::RowNotFound)
    }

    async fn stored(&self, owner: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE owner = $1")
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
    }
}
