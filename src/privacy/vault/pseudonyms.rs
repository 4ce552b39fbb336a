//! The per-patient secret that keys derived pseudonyms and UIDs: derived from the patient's
//! data key, so it exists exactly as long as that key does (`forgetSubject` ends it).

use hmac::Mac;

use super::{decrypt, keyed, undecryptable, Vault};

/// A subject's secret for keyed pseudonyms; never stored, never logged.
#[derive(Clone)]
pub struct PseudonymKey([u8; 32]);

impl PseudonymKey {
    /// The key's bytes, for an HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl Vault {
    /// The pseudonym secret of `subject` (`patient:<PatientID>`); `None` when the subject
    /// has no data key (it was forgotten, or never sealed).
    ///
    /// # Errors
    /// [`super::Undecryptable`] when the key exists but this pepper does not open it; any
    /// database error.
    pub async fn pseudonym_key(&self, subject: &str) -> sqlx::Result<Option<PseudonymKey>> {
        let subject_ref = self.subject_ref(subject);
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM subject_keys WHERE subject_ref = $1")
                .bind(&subject_ref)
                .fetch_optional(&self.pool)
                .await?;
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let data_key = decrypt(&self.wrapping, &subject_ref, &wrapped)
            .ok_or_else(|| undecryptable(&subject_ref))?;
        let derived = keyed(&data_key)
            .chain_update(b"chronicle keyed pseudonyms v1")
            .finalize()
            .into_bytes();
        Ok(Some(PseudonymKey(derived.into())))
    }
}
