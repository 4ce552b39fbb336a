//! The server pepper: the key under which API keys are hashed, subjects named and subject data
//! keys wrapped.

use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sqlx::PgPool;

const PEPPER_NAME: &str = "key_pepper";

/// The pepper's bytes; never printed.
pub struct Pepper(Vec<u8>);

impl Pepper {
    /// The configured pepper, or the one kept in the database (made on first use).
    ///
    /// # Errors
    /// Any database error.
    pub async fn load(pool: &PgPool, configured: Option<&SecretString>) -> sqlx::Result<Self> {
        if let Some(pepper) = configured.filter(|p| !p.expose_secret().is_empty()) {
            return Ok(Self(pepper.expose_secret().as_bytes().to_vec()));
        }
        tracing::warn!(
            "CHRONICLE_KEY_PEPPER is not set: the pepper of API keys and personal data is kept in the database"
        );
        let mut fresh = [0_u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(PEPPER_NAME)
        .bind(&fresh[..])
        .execute(pool)
        .await?;
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(PEPPER_NAME)
            .fetch_one(pool)
            .await
            .map(Self)
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
