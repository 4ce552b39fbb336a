//! Field-level encryption of personal data: each subject has a random data key (AES-256-GCM),
//! kept wrapped under a key derived from the server pepper in `subject_keys`, never in the
//! log. A personal leaf is stored as a sealed string; reading opens it with its subject's key,
//! and once the key is destroyed (`forgetSubject`) it reads as erased — a placeholder of the
//! leaf's JSON type, so every reader (aggregates, projections, the API) still decodes.

use std::collections::{HashMap, HashSet};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde_json::Value;
use sha2::Sha256;
use sqlx::{PgConnection, PgExecutor, PgPool};

mod pseudonyms;

pub use pseudonyms::PseudonymKey;

use super::personal::{elements_at, for_each_leaf, holds_personal_data, rules, Elements, Rules};

/// What an erased string reads as.
pub const ERASED: &str = "[erased]";
/// Sealed leaves start so; the control character keeps them apart from typed text.
const SEALED: &str = "\u{1}sealed:v1:";
const NONCE_BYTES: usize = 12;

/// A sealed value whose key exists but does not open it: the data is intact, but this
/// instance's pepper is not the one it was sealed under (or the store was tampered with). It
/// is never read as erased: only a destroyed key (`forgetSubject`) erases.
#[derive(Debug, thiserror::Error)]
#[error(
    "personal data of subject {subject} cannot be opened with this instance's CHRONICLE_KEY_PEPPER"
)]
pub struct Undecryptable {
    /// The subject's reference.
    pub subject: String,
}

/// An [`Undecryptable`] as the store error every reader already handles.
fn undecryptable(subject: &str) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(Undecryptable {
        subject: subject.to_owned(),
    }))
}

/// Seals and opens personal data.
#[derive(Clone)]
pub struct Vault {
    pool: PgPool,
    wrapping: Aes256Gcm,
    refs: Hmac<Sha256>,
}

fn keyed(pepper: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(pepper)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

impl Vault {
    /// A vault over `pool` whose keys are wrapped, and subjects named, under `pepper`.
    pub fn new(pool: PgPool, pepper: &[u8]) -> Self {
        let wrapping_key = keyed(pepper)
            .chain_update(b"chronicle subject key wrapping")
            .finalize()
            .into_bytes();
        let wrapping = Aes256Gcm::new_from_slice(&wrapping_key)
            .unwrap_or_else(|_| unreachable!("an HMAC-SHA256 output is 32 bytes"));
        Self {
            pool,
            wrapping,
            refs: keyed(pepper),
        }
    }

    /// The pseudonymous reference of a subject (`learner:<id>`): what the log and the key
    /// table name, so that neither holds the id itself.
    pub fn subject_ref(&self, subject: &str) -> String {
        let digest = self
            .refs
            .clone()
            .chain_update(b"subject\0")
            .chain_update(subject.as_bytes())
            .finalize()
            .into_bytes();
        hex::encode(&digest[..16])
    }

    /// Seals the personal fields of one aggregate's new events (and its snapshot) inside the
    /// append's transaction `conn`. An aggregate with one subject (a simulation's learner)
    /// records it when an event names it; elements with subjects of their own (a transfer
    /// job's tasks) are sealed each with its subject's key. A forgotten subject's new data is
    /// stored erased, as is that of an aggregate whose subject is unknown (it was forgotten
    /// before the aggregate began).
    ///
    /// # Errors
    /// Any database error.
    pub async fn seal(
        &self,
        conn: &mut PgConnection,
        aggregate: (&str, &str),
        events: &mut [(String, Value)],
        mut snapshot: Option<&mut Value>,
    ) -> sqlx::Result<()> {
        let Some(rules) = rules(aggregate.0) else {
            return Ok(());
        };
        let mut keys = HashMap::new();
        if rules.subject.is_some() {
            let subject = self.subject(conn, aggregate, rules, events).await?;
            let key = self.key_of(conn, &mut keys, &subject).await?;
            let mut seal = |leaf: &mut Value| *leaf = sealed(key.as_ref(), &subject, leaf);
            for (event_type, payload) in events.iter_mut() {
                for path in rules.event_paths(event_type) {
                    for_each_leaf(payload, path, &mut seal);
                }
            }
            if let Some(snapshot) = snapshot.as_deref_mut() {
                for path in rules.snapshot {
                    for_each_leaf(snapshot, path, &mut seal);
                }
            }
        }
        for (event_type, payload) in events.iter_mut() {
            for elements in rules.event_elements(event_type) {
                self.seal_elements(conn, &mut keys, elements, payload)
                    .await?;
            }
        }
        if let Some(snapshot) = snapshot {
            for elements in rules.snapshot_elements {
                self.seal_elements(conn, &mut keys, elements, snapshot)
                    .await?;
            }
        }
        Ok(())
    }

    /// The aggregate's one subject: named by one of these events (and recorded), or recorded
    /// before; empty when unknown.
    async fn subject(
        &self,
        conn: &mut PgConnection,
        aggregate: (&str, &str),
        rules: &Rules,
        events: &[(String, Value)],
    ) -> sqlx::Result<String> {
        let named = events
            .iter()
            .find_map(|(event_type, payload)| rules.subject_of(event_type, payload));
        if let Some(subject) = named {
            let subject = self.subject_ref(&subject);
            sqlx::query(
                "INSERT INTO aggregate_subjects (aggregate_type, aggregate_id, element, subject_ref)
                 VALUES ($1, $2, 0, $3) ON CONFLICT DO NOTHING",
            )
            .bind(aggregate.0)
            .bind(aggregate.1)
            .bind(&subject)
            .execute(&mut *conn)
            .await?;
            return Ok(subject);
        }
        let recorded: Option<String> = sqlx::query_scalar(
            "SELECT subject_ref FROM aggregate_subjects
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND element = 0",
        )
        .bind(aggregate.0)
        .bind(aggregate.1)
        .fetch_optional(&mut *conn)
        .await?;
        Ok(recorded.unwrap_or_default())
    }

    /// Seals each element of the array `elements` names in `value` with its own subject's key.
    async fn seal_elements(
        &self,
        conn: &mut PgConnection,
        keys: &mut HashMap<String, Option<Aes256Gcm>>,
        elements: &Elements,
        value: &mut Value,
    ) -> sqlx::Result<()> {
        for element in elements_at(value, elements.array) {
            let Some(natural) = elements.subject_of(element) else {
                continue;
            };
            if natural.contains(SEALED) || natural.ends_with(ERASED) {
                continue;
            }
            let subject = self.subject_ref(&natural);
            let key = self.key_of(conn, keys, &subject).await?;
            for field in elements.fields {
                if let Some(leaf) = element.get_mut(*field) {
                    *leaf = sealed(key.as_ref(), &subject, leaf);
                }
            }
        }
        Ok(())
    }

    /// The data key of `subject` (none for an unknown or forgotten one), once per append.
    async fn key_of(
        &self,
        conn: &mut PgConnection,
        keys: &mut HashMap<String, Option<Aes256Gcm>>,
        subject: &str,
    ) -> sqlx::Result<Option<Aes256Gcm>> {
        if subject.is_empty() {
            return Ok(None);
        }
        if let Some(key) = keys.get(subject) {
            return Ok(key.clone());
        }
        let key = self.data_key(conn, subject).await?;
        keys.insert(subject.to_owned(), key.clone());
        Ok(key)
    }

    /// The subject's data key, made on first use; `None` once the subject is forgotten.
    async fn data_key(
        &self,
        conn: &mut PgConnection,
        subject: &str,
    ) -> sqlx::Result<Option<Aes256Gcm>> {
        // Usually the key exists: one lookup (a forgotten subject has none, by the same
        // transaction that recorded the forgetting).
        let subjects = [subject.to_owned()];
        if let Some(key) = self.keys(&mut *conn, &subjects).await?.remove(subject) {
            return Ok(Some(key));
        }
        let forgotten: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM forgotten_subjects WHERE subject_ref = $1)",
        )
        .bind(subject)
        .fetch_one(&mut *conn)
        .await?;
        if forgotten {
            return Ok(None);
        }
        let mut fresh = [0_u8; 32];
        rand::rng().fill_bytes(&mut fresh);
        sqlx::query(
            "INSERT INTO subject_keys (subject_ref, wrapped) VALUES ($1, $2)
             ON CONFLICT (subject_ref) DO NOTHING",
        )
        .bind(subject)
        .bind(self.wrap(subject, &fresh))
        .execute(&mut *conn)
        .await?;
        Ok(self.keys(&mut *conn, &subjects).await?.remove(subject))
    }

    /// The data keys of `subjects` that still exist.
    async fn keys(
        &self,
        db: impl PgExecutor<'_>,
        subjects: &[String],
    ) -> sqlx::Result<HashMap<String, Aes256Gcm>> {
        let rows: Vec<(String, Vec<u8>)> = sqlx::query_as(
            "SELECT subject_ref, wrapped FROM subject_keys WHERE subject_ref = ANY($1)",
        )
        .bind(subjects)
        .fetch_all(db)
        .await?;
        rows.into_iter()
            .map(|(subject, wrapped)| match self.unwrap(&subject, &wrapped) {
                Some(key) => Ok((subject, key)),
                None => Err(undecryptable(&subject)),
            })
            .collect()
    }

    /// Checks that this vault opens the data keys already in the store (one is enough: they
    /// are all wrapped under the same pepper).
    ///
    /// # Errors
    /// [`Undecryptable`] (as `sqlx::Error::Decode`) when it does not; any database error.
    pub async fn check_opens_stored_keys(&self) -> sqlx::Result<()> {
        let one: Option<String> =
            sqlx::query_scalar("SELECT subject_ref FROM subject_keys LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
        if let Some(subject) = one {
            self.keys(&self.pool, &[subject]).await?;
        }
        Ok(())
    }

    fn wrap(&self, subject: &str, key: &[u8; 32]) -> Vec<u8> {
        encrypt(&self.wrapping, subject, key)
    }

    fn unwrap(&self, subject: &str, wrapped: &[u8]) -> Option<Aes256Gcm> {
        let key = decrypt(&self.wrapping, subject, wrapped)?;
        Aes256Gcm::new_from_slice(&key).ok()
    }

    /// Opens every sealed leaf of these payloads of `aggregate_type` events or snapshots:
    /// decrypted where the subject's key exists, erased where it was destroyed.
    ///
    /// # Errors
    /// Any database error.
    pub async fn open<'v>(
        &self,
        payloads: impl IntoIterator<Item = (&'v str, &'v mut Value)>,
    ) -> sqlx::Result<()> {
        let mut sealed: Vec<&mut Value> = Vec::new();
        for (aggregate_type, payload) in payloads {
            if holds_personal_data(aggregate_type) {
                sealed.push(payload);
            }
        }
        if sealed.is_empty() {
            return Ok(());
        }
        let mut subjects = HashSet::new();
        for payload in &mut sealed {
            visit_sealed(payload, &mut |text| {
                if let Some(parsed) = parse(text) {
                    subjects.insert(parsed.subject.to_owned());
                }
            });
        }
        let subjects: Vec<String> = subjects.into_iter().collect();
        let keys = self.keys(&self.pool, &subjects).await?;
        for payload in sealed {
            open_all(payload, &keys)?;
        }
        Ok(())
    }
}

/// One sealed leaf: its JSON type, subject and ciphertext.
struct Sealed<'t> {
    kind: char,
    subject: &'t str,
    blob: &'t str,
}

fn parse(text: &str) -> Option<Sealed<'_>> {
    let rest = text.strip_prefix(SEALED)?;
    let mut parts = rest.splitn(3, ':');
    let kind = parts.next()?.chars().next()?;
    Some(Sealed {
        kind,
        subject: parts.next()?,
        blob: parts.next()?,
    })
}

/// The sealed form of a scalar leaf under `key`, or its erased form without a key.
fn sealed(key: Option<&Aes256Gcm>, subject: &str, leaf: &Value) -> Value {
    let (kind, plain) = match leaf {
        Value::String(text) if text.starts_with(SEALED) => return leaf.clone(),
        Value::String(text) => ('s', text.clone()),
        Value::Number(number) => ('n', number.to_string()),
        Value::Bool(flag) => ('b', flag.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => return leaf.clone(),
    };
    let Some(key) = key else {
        return erased(kind);
    };
    let blob = STANDARD_NO_PAD.encode(encrypt(key, subject, plain.as_bytes()));
    Value::String(format!("{SEALED}{kind}:{subject}:{blob}"))
}

fn erased(kind: char) -> Value {
    match kind {
        'n' => Value::from(0),
        'b' => Value::Bool(false),
        _ => Value::String(ERASED.to_owned()),
    }
}

/// The leaf's value; erased when its subject's key was destroyed.
///
/// # Errors
/// [`Undecryptable`] when the key exists but does not open the leaf.
fn opened(sealed: &Sealed<'_>, key: Option<&Aes256Gcm>) -> sqlx::Result<Value> {
    let Some(key) = key else {
        return Ok(erased(sealed.kind));
    };
    let plain = STANDARD_NO_PAD
        .decode(sealed.blob)
        .ok()
        .and_then(|blob| decrypt(key, sealed.subject, &blob))
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| undecryptable(sealed.subject))?;
    match sealed.kind {
        's' => Ok(Value::String(plain)),
        _ => serde_json::from_str(&plain).map_err(|_| undecryptable(sealed.subject)),
    }
}

fn visit_sealed(value: &mut Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) if text.starts_with(SEALED) => visit(text),
        Value::Array(items) => items.iter_mut().for_each(|item| visit_sealed(item, visit)),
        Value::Object(fields) => fields.values_mut().for_each(|f| visit_sealed(f, visit)),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
}

fn open_all(value: &mut Value, keys: &HashMap<String, Aes256Gcm>) -> sqlx::Result<()> {
    match value {
        Value::String(text) if text.starts_with(SEALED) => {
            let Some(sealed) = parse(text) else {
                return Err(undecryptable("(malformed)"));
            };
            *value = opened(&sealed, keys.get(sealed.subject))?;
        }
        Value::Array(items) => {
            for item in items {
                open_all(item, keys)?;
            }
        }
        Value::Object(fields) => {
            for field in fields.values_mut() {
                open_all(field, keys)?;
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => {}
    }
    Ok(())
}

/// Nonce, then AES-256-GCM ciphertext bound to the subject.
fn encrypt(key: &Aes256Gcm, subject: &str, plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0_u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let payload = Payload {
        msg: plain,
        aad: subject.as_bytes(),
    };
    let ciphertext = key
        .encrypt(Nonce::from_slice(&nonce), payload)
        .unwrap_or_else(|_| unreachable!("AES-GCM encrypts any message this size"));
    [nonce.as_slice(), &ciphertext].concat()
}

fn decrypt(key: &Aes256Gcm, subject: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_BYTES {
        return None;
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    key.decrypt(
        Nonce::from_slice(nonce),
        Payload {
            msg: ciphertext,
            aad: subject.as_bytes(),
        },
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key() -> Aes256Gcm {
        Aes256Gcm::new_from_slice(&[7_u8; 32]).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn a_sealed_leaf_opens_to_itself_with_its_key_and_to_a_typed_placeholder_without() {
        let key = key();
        for leaf in [
            json!("Zebediah"),
            json!(34),
            json!(0.7),
            json!(true),
            json!(""),
        ] {
            let sealed_leaf = sealed(Some(&key), "subject-1", &leaf);
            let text = sealed_leaf.as_str().unwrap_or_default();
            assert!(
                text.starts_with(SEALED) && !text.contains("Zebediah"),
                "{text}"
            );
            let parsed = parse(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(opened(&parsed, Some(&key)).ok(), Some(leaf.clone()));
            let gone = opened(&parsed, None).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                matches!(
                    (&leaf, &gone),
                    (Value::String(_), Value::String(_))
                        | (Value::Number(_), Value::Number(_))
                        | (Value::Bool(_), Value::Bool(_))
                ),
                "{leaf} → {gone}"
            );
        }
    }

    #[test]
    fn a_ciphertext_moved_to_another_subject_altered_or_under_another_key_is_an_error_not_erased() {
        let key = key();
        let sealed_leaf = sealed(Some(&key), "subject-1", &json!("secret"));
        let text = sealed_leaf.as_str().unwrap_or_default();
        let moved = text.replace("subject-1", "subject-2");
        let parsed = parse(&moved).unwrap_or_else(|| panic!("{moved}"));
        assert!(opened(&parsed, Some(&key)).is_err());
        let other = Aes256Gcm::new_from_slice(&[8_u8; 32]).unwrap_or_else(|_| unreachable!());
        let parsed = parse(text).unwrap_or_else(|| panic!("{text}"));
        assert!(opened(&parsed, Some(&other)).is_err());
        // A character well inside the ciphertext (the last one may carry only padding bits).
        let mut altered: Vec<char> = text.chars().collect();
        let at = altered.len() - 10;
        altered[at] = if altered[at] == 'A' { 'B' } else { 'A' };
        let altered: String = altered.into_iter().collect();
        let parsed = parse(&altered).unwrap_or_else(|| panic!("{altered}"));
        assert!(opened(&parsed, Some(&key)).is_err());
    }

    #[test]
    fn without_a_key_new_data_is_stored_erased() {
        assert_eq!(sealed(None, "s", &json!("Ann")), json!(ERASED));
        assert_eq!(sealed(None, "s", &json!(41)), json!(0));
    }
}
