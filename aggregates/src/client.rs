//! A client of the API and its keys: created by an admin, then keys issued and revoked and its
//! webhook secret rotated, each an event, so that key history is auditable. A key enters the
//! log only as its keyed hash (the secret is shown once, to the admin who issued it).
//!
//! Transitions. Client: none → active (`Create`); every other command needs an active client.
//! Key: none → issued (`IssueKey`) → revoked (`RevokeKey`); revoked is final.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{DomainError, ErrorCode, Upcast};

/// Most keys a client holds that are not revoked.
pub const MAX_ACTIVE_KEYS: usize = 20;

/// What a client's keys may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Its own objects only.
    Client,
    /// Every object, and the admin-only actions.
    Admin,
}

impl Role {
    /// The stored form: `client` or `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Admin => "admin",
        }
    }

    /// The role of a stored form; anything but `admin` grants no more than a client's.
    pub fn parse(stored: &str) -> Self {
        if stored == Self::Admin.as_str() {
            Self::Admin
        } else {
            Self::Client
        }
    }
}

/// Commands to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientCommand {
    /// Creates the client (its id is the aggregate id).
    Create {
        /// What its keys may do.
        role: Role,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Issues a key: the server made the secret and hashed it.
    IssueKey {
        /// The key's public id (part of the key).
        key_id: String,
        /// The keyed hash of the key's secret.
        hash: String,
        /// What the admin calls it.
        label: String,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Revokes a key: it no longer authenticates.
    RevokeKey {
        /// The key's public id.
        key_id: String,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Replaces the client's webhook signing secret (the secret itself stays out of the log).
    RotateWebhookSecret {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What happened to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientEvent {
    /// Created.
    Created {
        /// What its keys may do.
        role: Role,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A key was issued.
    KeyIssued {
        /// The key's public id.
        key_id: String,
        /// The keyed hash of its secret.
        hash: String,
        /// The client's role, which the key carries.
        role: Role,
        /// What the admin calls it.
        label: String,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A key was revoked.
    KeyRevoked {
        /// The key's public id.
        key_id: String,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The webhook signing secret was replaced.
    WebhookSecretRotated {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ClientEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Created { .. } => "ClientCreated",
            Self::KeyIssued { .. } => "ClientKeyIssued",
            Self::KeyRevoked { .. } => "ClientKeyRevoked",
            Self::WebhookSecretRotated { .. } => "ClientWebhookSecretRotated",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}

/// Why a client command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No such client.
    #[error("client not found")]
    NotFound,
    /// The client exists already.
    #[error("a client with this id exists already")]
    Exists,
    /// The client has no such key.
    #[error("key not found")]
    KeyNotFound,
    /// The key was revoked already.
    #[error("the key is revoked already")]
    KeyRevoked,
    /// The input breaks a rule.
    #[error("{0}")]
    Invalid(String),
}

impl DomainError for ClientError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound | Self::KeyNotFound => ErrorCode::NotFound,
            Self::Exists => ErrorCode::Conflict,
            Self::KeyRevoked => ErrorCode::InvalidTransition,
            Self::Invalid(_) => ErrorCode::Validation,
        }
    }
}

/// A client's state: its role and each key's revocation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Client {
    role: Option<Role>,
    /// Key id → revoked.
    keys: BTreeMap<String, bool>,
}

impl Client {
    /// The role, once created.
    pub fn role(&self) -> Option<Role> {
        self.role
    }
}

/// Ids the service itself records as actors, which no client may take.
const RESERVED_IDS: [&str; 2] = ["system", "anonymous"];

/// True for a client id: 1–64 lowercase letters, digits, `-` or `_`, not reserved.
pub fn is_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_'))
        && !RESERVED_IDS.contains(&id)
}

fn is_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Aggregate for Client {
    const TYPE: &'static str = "Client";
    type Command = ClientCommand;
    type Event = ClientEvent;
    type Error = ClientError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match (self.role, command) {
            (None, ClientCommand::Create { role, by, at }) => ClientEvent::Created { role, by, at },
            (Some(_), ClientCommand::Create { .. }) => return Err(ClientError::Exists),
            (None, _) => return Err(ClientError::NotFound),
            (
                Some(role),
                ClientCommand::IssueKey {
                    key_id,
                    hash,
                    label,
                    by,
                    at,
                },
            ) => {
                if !is_key_id(&key_id) || self.keys.contains_key(&key_id) {
                    return Err(ClientError::Invalid(
                        "the key id is malformed or taken".into(),
                    ));
                }
                if label.chars().count() > 200 || label.chars().any(char::is_control) {
                    return Err(ClientError::Invalid(
                        "label must be at most 200 characters without control characters".into(),
                    ));
                }
                if self.keys.values().filter(|revoked| !**revoked).count() >= MAX_ACTIVE_KEYS {
                    return Err(ClientError::Invalid(format!(
                        "a client holds at most {MAX_ACTIVE_KEYS} keys; revoke one first"
                    )));
                }
                ClientEvent::KeyIssued {
                    key_id,
                    hash,
                    role,
                    label,
                    by,
                    at,
                }
            }
            (Some(_), ClientCommand::RevokeKey { key_id, by, at }) => {
                match self.keys.get(&key_id) {
                    None => return Err(ClientError::KeyNotFound),
                    Some(true) => return Err(ClientError::KeyRevoked),
                    Some(false) => ClientEvent::KeyRevoked { key_id, by, at },
                }
            }
            (Some(_), ClientCommand::RotateWebhookSecret { by, at }) => {
                ClientEvent::WebhookSecretRotated { by, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            ClientEvent::Created { role, .. } => self.role = Some(role),
            ClientEvent::KeyIssued { key_id, .. } => {
                self.keys.insert(key_id, false);
            }
            ClientEvent::KeyRevoked { key_id, .. } => {
                self.keys.insert(key_id, true);
            }
            ClientEvent::WebhookSecretRotated { .. } => {}
        }
    }
}

impl Upcast for Client {}

impl crate::Effects for Client {}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }

    fn created() -> ClientEvent {
        ClientEvent::Created {
            role: Role::Client,
            by: "admin".into(),
            at: at(),
        }
    }

    fn issue(key_id: &str) -> ClientCommand {
        ClientCommand::IssueKey {
            key_id: key_id.into(),
            hash: "h".into(),
            label: "ci".into(),
            by: "admin".into(),
            at: at(),
        }
    }

    fn issued(key_id: &str) -> ClientEvent {
        ClientEvent::KeyIssued {
            key_id: key_id.into(),
            hash: "h".into(),
            role: Role::Client,
            label: "ci".into(),
            by: "admin".into(),
            at: at(),
        }
    }

    fn revoke(key_id: &str) -> ClientCommand {
        ClientCommand::RevokeKey {
            key_id: key_id.into(),
            by: "admin".into(),
            at: at(),
        }
    }

    fn revoked(key_id: &str) -> ClientEvent {
        ClientEvent::KeyRevoked {
            key_id: key_id.into(),
            by: "admin".into(),
            at: at(),
        }
    }

    fn create() -> ClientCommand {
        ClientCommand::Create {
            role: Role::Client,
            by: "admin".into(),
            at: at(),
        }
    }

    fn rotate() -> ClientCommand {
        ClientCommand::RotateWebhookSecret {
            by: "admin".into(),
            at: at(),
        }
    }

    fn when(
        given: Vec<ClientEvent>,
        command: ClientCommand,
    ) -> Result<Vec<ClientEvent>, ClientError> {
        TestFramework::<Client>::with(())
            .given(given)
            .when(command)
            .inspect_result()
    }

    #[test]
    fn client_transitions_allowed_and_refused() {
        // none → active; active → create is refused; nothing else works before creation.
        assert_eq!(when(vec![], create()), Ok(vec![created()]));
        assert_eq!(when(vec![created()], create()), Err(ClientError::Exists));
        for command in [issue("k1"), revoke("k1"), rotate()] {
            assert_eq!(when(vec![], command), Err(ClientError::NotFound));
        }
        let rotated = ClientEvent::WebhookSecretRotated {
            by: "admin".into(),
            at: at(),
        };
        assert_eq!(when(vec![created()], rotate()), Ok(vec![rotated]));
    }

    #[test]
    fn key_transitions_allowed_and_refused() {
        // none → issued, issued → revoked.
        assert_eq!(when(vec![created()], issue("k1")), Ok(vec![issued("k1")]));
        assert_eq!(
            when(vec![created(), issued("k1")], revoke("k1")),
            Ok(vec![revoked("k1")])
        );
        // none → revoked, issued → issued, revoked → revoked, revoked → issued: refused.
        assert_eq!(
            when(vec![created()], revoke("k1")),
            Err(ClientError::KeyNotFound)
        );
        let history = vec![created(), issued("k1"), revoked("k1")];
        assert_eq!(
            when(history.clone(), revoke("k1")),
            Err(ClientError::KeyRevoked)
        );
        for given in [vec![created(), issued("k1")], history] {
            assert!(matches!(
                when(given, issue("k1")),
                Err(ClientError::Invalid(_))
            ));
        }
    }

    #[test]
    fn a_key_carries_the_clients_role() {
        let admin = ClientEvent::Created {
            role: Role::Admin,
            by: "bootstrap".into(),
            at: at(),
        };
        let Ok(events) = when(vec![admin], issue("k1")) else {
            panic!("refused");
        };
        assert!(matches!(
            &events[0],
            ClientEvent::KeyIssued {
                role: Role::Admin,
                ..
            }
        ));
    }

    #[test]
    fn active_keys_are_capped_and_revoked_ones_do_not_count() {
        let mut given = vec![created()];
        given.extend((0..MAX_ACTIVE_KEYS).map(|n| issued(&format!("k{n}"))));
        assert!(matches!(
            when(given.clone(), issue("extra")),
            Err(ClientError::Invalid(_))
        ));
        given.push(revoked("k0"));
        assert_eq!(when(given, issue("extra")), Ok(vec![issued("extra")]));
    }

    #[test]
    fn ids_are_lowercase_slugs_and_not_reserved() {
        for good in ["acme", "team-7", "a_b"] {
            assert!(is_client_id(good), "{good}");
        }
        let long = "x".repeat(65);
        for bad in ["", "Acme", "a b", "system", "anonymous", "é", long.as_str()] {
            assert!(!is_client_id(bad), "{bad}");
        }
    }
}
