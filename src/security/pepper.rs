//! The server pepper: the key under which API keys are hashed, subjects named and subject data
//! keys wrapped.

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgPool;

use crate::privacy::Vault;

const PEPPER_NAME: &str = "key_pepper";
/// The fingerprint of the pepper the database was first started with.
const FINGERPRINT_NAME: &str = "key_pepper_fingerprint";

/// Why an instance's pepper cannot be used with this database.
#[derive(Debug, thiserror::Error)]
pub enum PepperError {
    /// Another pepper was in use first: keys would not verify, personal data would not open.
    #[error(
        "CHRONICLE_KEY_PEPPER is not the pepper this database was first started with: API keys \
         would not verify and personal data would not open. Refusing to start; give every \
         instance the same CHRONICLE_KEY_PEPPER (or none, to use the one kept in the database)"
    )]
    Drifted,
    /// The database could not be asked.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The pepper's bytes; never printed.
pub struct Pepper(Vec<u8>);

impl Pepper {
    /// The configured pepper, or the one kept in the database (made on first use), checked
    /// against the fingerprint of the first one this database was started with.
    ///
    /// # Errors
    /// [`PepperError::Drifted`] for another pepper than the first; any database error.
    pub async fn load(
        pool: &PgPool,
        configured: Option<&SecretString>,
    ) -> Result<Self, PepperError> {
        let pepper = Self::configured_or_kept(pool, configured).await?;
        // Before the first fingerprint is recorded (a database older than fingerprints), the
        // data keys already stored tell whether this is their pepper.
        match Vault::new(pool.clone(), &pepper.0)
            .check_opens_stored_keys()
            .await
        {
            Err(sqlx::Error::Decode(_)) => return Err(PepperError::Drifted),
            checked => checked?,
        }
        pepper.check_fingerprint(pool).await?;
        Ok(pepper)
    }

    async fn configured_or_kept(
        pool: &PgPool,
        configured: Option<&SecretString>,
    ) -> sqlx::Result<Self> {
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

    /// A one-way fingerprint of the pepper: it names the pepper without revealing it.
    fn fingerprint(&self) -> Vec<u8> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
            .chain_update(b"chronicle pepper fingerprint")
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Records this pepper's fingerprint if none is, then compares: of instances started at
    /// once with different peppers, the first to record wins and the others refuse.
    async fn check_fingerprint(&self, pool: &PgPool) -> Result<(), PepperError> {
        // Two statements: the second's snapshot sees a row another instance committed while
        // the first waited for it.
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(FINGERPRINT_NAME)
        .bind(self.fingerprint())
        .execute(pool)
        .await?;
        let recorded: Vec<u8> =
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(FINGERPRINT_NAME)
                .fetch_one(pool)
                .await?;
        if recorded == self.fingerprint() {
            Ok(())
        } else {
            Err(PepperError::Drifted)
        }
    }
}
