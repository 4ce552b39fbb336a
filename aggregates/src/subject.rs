//! A data subject (a learner, a patient) whose personal data can be erased. Its id is the
//! subject's pseudonymous reference, never the natural id. Forgetting it destroys its data key
//! (in the same transaction as the event): its events stay and their hashes still verify, but
//! their personal fields read as erased from then on.
//!
//! Transitions: remembered → forgotten (`Forget`); forgotten is final.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::{DomainError, ErrorCode, Upcast};

/// Commands to a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubjectCommand {
    /// Erase the subject's personal data.
    Forget {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

/// What happened to a subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubjectEvent {
    /// Its data key was destroyed.
    Forgotten {
        /// The admin.
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SubjectEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Forgotten { .. } => "SubjectForgotten".to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}

/// Why a subject command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The subject was forgotten already.
    #[error("the subject is forgotten already")]
    Forgotten,
}

impl DomainError for SubjectError {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Forgotten => ErrorCode::InvalidTransition,
        }
    }
}

/// A subject's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    forgotten: bool,
}

impl Aggregate for Subject {
    const TYPE: &'static str = "Subject";
    type Command = SubjectCommand;
    type Event = SubjectEvent;
    type Error = SubjectError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let SubjectCommand::Forget { by, at } = command;
        if self.forgotten {
            return Err(SubjectError::Forgotten);
        }
        sink.write(SubjectEvent::Forgotten { by, at }, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SubjectEvent::Forgotten { .. } => self.forgotten = true,
        }
    }
}

impl Upcast for Subject {}

impl crate::Effects for Subject {}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use cqrs_es::test::TestFramework;

    use super::*;

    fn at() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
    }

    #[test]
    fn a_subject_is_forgotten_once() {
        let forget = || SubjectCommand::Forget {
            by: "admin".into(),
            at: at(),
        };
        let forgotten = SubjectEvent::Forgotten {
            by: "admin".into(),
            at: at(),
        };
        TestFramework::<Subject>::with(())
            .given_no_previous_events()
            .when(forget())
            .then_expect_events(vec![forgotten.clone()]);
        TestFramework::<Subject>::with(())
            .given(vec![forgotten])
            .when(forget())
            .then_expect_error(SubjectError::Forgotten);
    }
}
