//! A DICOM server (PACS) registered by an admin: its DICOMweb base URL and how to
//! authenticate. Credentials never enter the log: `auth` names the environment variable that
//! holds them. Its id is its name; registering a registered name updates it.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{DomainError, ErrorCode, Upcast};

/// How Chronicle authenticates to a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ServerAuth {
    /// HTTP basic: the variable holds `user:password`.
    Basic {
        /// The environment variable's name.
        secret_env: String,
    },
    /// A bearer token: the variable holds the token.
    Bearer {
        /// The environment variable's name.
        secret_env: String,
    },
}

/// A registered server's set-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// DICOMweb base URL, e.g. `http://pacs:8042/dicom-web`.
    pub base_url: String,
    /// Authentication, if the server wants it.
    pub auth: Option<ServerAuth>,
}

/// Commands to a DICOM server registration.
#[derive(Debug, Clone, PartialEq)]
pub enum DicomServerCommand {
    /// Registers (or updates) the server.
    Register {
        /// Its name (the aggregate id).
        name: String,
        /// Its set-up.
        spec: ServerSpec,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Removes it: new jobs may no longer name it.
    Remove {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What happened to a server registration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DicomServerEvent {
    /// Registered or updated.
    Registered {
        /// Its name.
        name: String,
        /// Its set-up.
        spec: ServerSpec,
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Removed.
    Removed {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for DicomServerEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Registered { .. } => "DicomServerRegistered",
            Self::Removed { .. } => "DicomServerRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}

/// Why a registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DicomServerError {
    /// The server is not registered.
    #[error("DICOM server not found")]
    NotFound,
    /// The name or set-up breaks rules.
    #[error("invalid DICOM server: {}", problems.join("; "))]
    Invalid {
        /// Each broken rule.
        problems: Vec<String>,
    },
}

impl DomainError for DicomServerError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound => ErrorCode::NotFound,
            Self::Invalid { .. } => ErrorCode::Validation,
        }
    }
}

/// A server registration's state. Its transitions: registered ⇄ removed (registering a
/// registered server updates it).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DicomServer {
    name: Option<String>,
    spec: Option<ServerSpec>,
    removed: bool,
}

impl DicomServer {
    /// The set-up, while registered.
    pub fn spec(&self) -> Option<&ServerSpec> {
        self.spec.as_ref().filter(|_| !self.removed)
    }
}

/// True for a name of 1–64 letters, digits, `-`, `_` or `.`.
fn is_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// The prefix every credentials variable must have: a registration may not point the
/// service's own secrets (database URL, API keys, audit key) at a server of its choosing.
pub const SECRET_ENV_PREFIX: &str = "CHRONICLE_DICOM_";

/// True for a credentials variable: `CHRONICLE_DICOM_` then letters, digits and `_`.
fn is_env_name(name: &str) -> bool {
    name.len() <= 128
        && name
            .strip_prefix(SECRET_ENV_PREFIX)
            .is_some_and(|rest| !rest.is_empty())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl ServerSpec {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let url = self.base_url.as_str();
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        if rest.is_none_or(|r| {
            r.is_empty()
                || r.len() > 2_000
                || r.chars().any(|c| c.is_whitespace() || c.is_control())
                || r.split('/')
                    .next()
                    .is_some_and(|authority| authority.contains('@'))
        }) {
            problems
                .push("baseUrl must be an http:// or https:// URL without credentials".to_owned());
        }
        if let Some(ServerAuth::Basic { secret_env } | ServerAuth::Bearer { secret_env }) =
            &self.auth
        {
            if !is_env_name(secret_env) {
                problems.push(format!(
                    "secretEnv must name an environment variable starting {SECRET_ENV_PREFIX}"
                ));
            }
        }
        problems
    }
}

impl Aggregate for DicomServer {
    const TYPE: &'static str = "DicomServer";
    type Command = DicomServerCommand;
    type Event = DicomServerEvent;
    type Error = DicomServerError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = match command {
            DicomServerCommand::Register { name, spec, by, at } => {
                let mut problems = spec.problems();
                if !is_name(&name) {
                    problems.insert(
                        0,
                        "name must be 1 to 64 letters, digits, '-', '_' or '.'".to_owned(),
                    );
                }
                if !problems.is_empty() {
                    return Err(DicomServerError::Invalid { problems });
                }
                DicomServerEvent::Registered { name, spec, by, at }
            }
            DicomServerCommand::Remove { by, at } => {
                if self.spec().is_none() {
                    return Err(DicomServerError::NotFound);
                }
                DicomServerEvent::Removed { by, at }
            }
        };
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            DicomServerEvent::Registered { name, spec, .. } => {
                self.name = Some(name);
                self.spec = Some(spec);
                self.removed = false;
            }
            DicomServerEvent::Removed { .. } => self.removed = true,
        }
    }
}

impl Upcast for DicomServer {}

impl crate::Effects for DicomServer {}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }

    fn register(name: &str, base_url: &str) -> DicomServerCommand {
        DicomServerCommand::Register {
            name: name.into(),
            spec: ServerSpec {
                base_url: base_url.into(),
                auth: Some(ServerAuth::Basic {
                    secret_env: "CHRONICLE_DICOM_PACS".into(),
                }),
            },
            by: "admin".into(),
            at: at(),
        }
    }

    fn registered() -> DicomServerEvent {
        DicomServerEvent::Registered {
            name: "pacs".into(),
            spec: ServerSpec {
                base_url: "http://pacs/dicom-web".into(),
                auth: Some(ServerAuth::Basic {
                    secret_env: "CHRONICLE_DICOM_PACS".into(),
                }),
            },
            by: "admin".into(),
            at: at(),
        }
    }

    fn removed() -> DicomServerEvent {
        DicomServerEvent::Removed {
            by: "admin".into(),
            at: at(),
        }
    }

    #[test]
    fn every_transition_registered_and_removed_is_allowed_or_refused() {
        // none → registered, registered → registered (update), removed → registered.
        for given in [vec![], vec![registered()], vec![registered(), removed()]] {
            TestFramework::<DicomServer>::with(())
                .given(given)
                .when(register("pacs", "http://pacs/dicom-web"))
                .then_expect_events(vec![registered()]);
        }
        // registered → removed; none → removed and removed → removed are refused.
        TestFramework::<DicomServer>::with(())
            .given(vec![registered()])
            .when(DicomServerCommand::Remove {
                by: "admin".into(),
                at: at(),
            })
            .then_expect_events(vec![removed()]);
        for given in [vec![], vec![registered(), removed()]] {
            TestFramework::<DicomServer>::with(())
                .given(given)
                .when(DicomServerCommand::Remove {
                    by: "admin".into(),
                    at: at(),
                })
                .then_expect_error(DicomServerError::NotFound);
        }
    }

    #[test]
    fn bad_names_urls_and_variables_are_all_reported() {
        let mut command = register("no spaces", "ftp://x");
        if let DicomServerCommand::Register { spec, .. } = &mut command {
            spec.auth = Some(ServerAuth::Bearer {
                secret_env: "1BAD-NAME".into(),
            });
        }
        let result = TestFramework::<DicomServer>::with(())
            .given_no_previous_events()
            .when(command)
            .inspect_result();
        let Err(DicomServerError::Invalid { problems }) = result else {
            panic!("{result:?}");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
