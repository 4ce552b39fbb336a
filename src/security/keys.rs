//! API keys: `chr_<key id>_<secret>`. The key id is public (it names the key in the log and
//! in `revokeKey`); the 32-byte secret is shown once and stored only as HMAC-SHA256 under the
//! server's pepper.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chronicle_aggregates::client::Role;
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgPool;

use super::known_keys::{IssuedKey, KnownKeys};

const PREFIX: &str = "chr_";
const KEY_ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A freshly made key: its public id and the whole key, which is shown once.
pub struct NewKey {
    /// The public id.
    pub key_id: String,
    /// The whole key, as the client sends it.
    pub token: SecretString,
}

impl NewKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut id = [0_u8; KEY_ID_BYTES];
        let mut secret = [0_u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut id);
        rand::rng().fill_bytes(&mut secret);
        let key_id = hex::encode(id);
        let token = format!("{PREFIX}{key_id}_{}", URL_SAFE_NO_PAD.encode(secret)).into();
        Self { key_id, token }
    }

    /// A key given whole (the bootstrap key), if it has the shape of one.
    pub fn parse(token: &SecretString) -> Option<Self> {
        let (key_id, _) = split(token.expose_secret())?;
        Some(Self {
            key_id: key_id.to_owned(),
            token: token.clone(),
        })
    }

    /// The secret part, to hash.
    pub fn secret(&self) -> &str {
        split(self.token.expose_secret()).map_or("", |(_, secret)| secret)
    }
}

/// The key id and secret of a well-formed key.
fn split(token: &str) -> Option<(&str, &str)> {
    let (key_id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let well_formed = key_id.len() == KEY_ID_BYTES * 2
        && key_id.bytes().all(|b| b.is_ascii_hexdigit())
        && URL_SAFE_NO_PAD
            .decode(secret)
            .is_ok_and(|bytes| bytes.len() == SECRET_BYTES);
    well_formed.then_some((key_id, secret))
}

/// Hashes key secrets under the pepper.
#[derive(Clone)]
pub struct KeyHasher {
    mac: Hmac<Sha256>,
}

impl KeyHasher {
    /// A hasher under `pepper`.
    pub fn new(pepper: &[u8]) -> Self {
        // HMAC accepts keys of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(pepper)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Self { mac }
    }

    /// The stored form of a key's secret: HMAC-SHA256, hex.
    pub fn hash(&self, secret: &str) -> String {
        hex::encode(
            self.mac
                .clone()
                .chain_update(secret)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `secret` hashes to `stored`, compared in constant time.
    fn verify(&self, secret: &str, stored: &str) -> bool {
        let Ok(expected) = hex::decode(stored) else {
            return false;
        };
        self.mac
            .clone()
            .chain_update(secret)
            .verify_slice(&expected)
            .is_ok()
    }
}

/// Who a valid key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The key's public id: what a revocation names.
    pub key_id: String,
    /// The client's id: the actor on its events and the owner of what it creates.
    pub client_id: String,
    /// What the key may do.
    pub role: Role,
}

/// Checks presented keys against the issued, unrevoked ones (kept in memory for a while,
/// see [`KnownKeys`]).
#[derive(Clone)]
pub struct Authenticator {
    pool: PgPool,
    hasher: KeyHasher,
    known: KnownKeys,
}

impl Authenticator {
    /// Checks keys issued in `pool`, hashed by `hasher`, keeping them in `known`.
    pub fn new(pool: PgPool, hasher: KeyHasher, known: KnownKeys) -> Self {
        Self {
            pool,
            hasher,
            known,
        }
    }

    /// The identity `token` proves, or `None` for a malformed, unknown, revoked or wrong key.
    ///
    /// # Errors
    /// Any database error.
    pub async fn authenticate(&self, token: &str) -> sqlx::Result<Option<Identity>> {
        let Some((key_id, secret)) = split(token) else {
            return Ok(None);
        };
        let issued = match self.known.get(key_id) {
            Ok(issued) => issued,
            Err(generation) => {
                let Some(issued) = self.issued(key_id).await? else {
                    return Ok(None);
                };
                self.known.keep(key_id, issued.clone(), generation);
                issued
            }
        };
        Ok(self.hasher.verify(secret, &issued.hash).then(|| Identity {
            key_id: key_id.to_owned(),
            client_id: issued.client_id,
            role: issued.role,
        }))
    }

    /// Key `key_id` as `api_keys` holds it, if issued and not revoked.
    async fn issued(&self, key_id: &str) -> sqlx::Result<Option<IssuedKey>> {
        let row: Option<(String, String, String)> = sqlx::query_as(
            "SELECT client_id, role, hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(client_id, role, hash)| IssuedKey {
            client_id,
            role: Role::parse(&role),
            hash,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_verifies_only_against_its_own_hash() {
        let hasher = KeyHasher::new(b"pepper");
        let key = NewKey::generate();
        let Some((key_id, secret)) = split(key.token.expose_secret()) else {
            panic!("a generated key is well-formed");
        };
        assert_eq!(key_id, key.key_id);
        let stored = hasher.hash(secret);
        assert!(hasher.verify(secret, &stored));
        assert!(!hasher.verify(NewKey::generate().secret(), &stored));
        assert!(!KeyHasher::new(b"other").verify(secret, &stored));
        assert!(!hasher.verify(secret, "not hex"));
    }

    #[test]
    fn malformed_keys_are_refused_before_any_lookup() {
        let good = NewKey::generate();
        let token = good.token.expose_secret();
        for bad in [
            "",
            "chr_",
            "Bearer x",
            &token[..token.len() - 1],
            &token.replacen("chr_", "key_", 1),
            &format!("{token}A"),
            "chr_zzzzzzzzzzzzzzzz_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(split(bad).is_none(), "{bad}");
        }
    }
}
