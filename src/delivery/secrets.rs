//! Per-owner webhook signing secrets: created on first use, kept in `webhook_secrets`.

use std::collections::HashMap;
use std::sync::Mutex;

use rand::RngCore;
use sqlx::PgPool;

/// The owners' signing secrets, cached after the first read.
pub struct WebhookSecrets {
    pool: PgPool,
    cache: Mutex<HashMap<String, String>>,
}

impl WebhookSecrets {
    /// Secrets stored in `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The secret `owner`'s webhooks are signed with, created (32 random bytes) if missing.
    ///
    /// # Errors
    /// Any database error.
    pub async fn for_owner(&self, owner: &str) -> Result<String, sqlx::Error> {
        if let Some(secret) = self.cached(owner) {
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
        let secret: String =
            sqlx::query_scalar("SELECT secret FROM webhook_secrets WHERE owner = $1")
                .bind(owner)
                .fetch_one(&self.pool)
                .await?;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(owner.to_owned(), secret.clone());
        }
        Ok(secret)
    }

    fn cached(&self, owner: &str) -> Option<String> {
        self.cache.lock().ok()?.get(owner).cloned()
    }
}
