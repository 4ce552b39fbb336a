//! What happened in a simulation. Event types and versions are a contract: never rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    AiCallFailure, AiCallRecord, AiService, EndReason, Feedback, Message, SimulationSpec,
    SimulationStatus,
};

/// A simulation's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SimulationEvent {
    /// The session was set up.
    Created {
        /// The simulation's id.
        simulation_id: Uuid,
        /// The owning client.
        owner: String,
        /// The set-up.
        spec: SimulationSpec,
        /// When the time limit ends it, if it has one.
        ends_at: Option<DateTime<Utc>>,
        /// When.
        at: DateTime<Utc>,
    },
    /// An AI call is wanted; the responder makes it.
    AiCallRequested {
        /// The call's id.
        call_id: Uuid,
        /// What it is for.
        service: AiService,
        /// When.
        at: DateTime<Utc>,
    },
    /// An AI call answered; its output follows as a message or as the feedback.
    AiCallCompleted {
        /// The audit record.
        call: AiCallRecord,
        /// When.
        at: DateTime<Utc>,
    },
    /// An AI call failed after its retries.
    AiCallFailed {
        /// The audit record.
        failure: AiCallFailure,
        /// When.
        at: DateTime<Utc>,
    },
    /// A message joined the conversation.
    MessagePosted {
        /// The message.
        message: Message,
    },
    /// The session ended; the feedback call is requested next.
    Ended {
        /// Why.
        reason: EndReason,
        /// A patient reply still being generated, now abandoned.
        abandoned_call: Option<Uuid>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The feedback is recorded.
    FeedbackRecorded {
        /// The feedback.
        feedback: Feedback,
        /// The call that produced it.
        call_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its owner archived it.
    Archived {
        /// When.
        at: DateTime<Utc>,
    },
}

impl SimulationEvent {
    /// The status after this event, given the status before (`None` before creation).
    pub fn status_after(&self, before: Option<SimulationStatus>) -> Option<SimulationStatus> {
        Some(match self {
            Self::Created { .. } => SimulationStatus::Created,
            Self::MessagePosted { .. } => SimulationStatus::InProgress,
            Self::AiCallFailed { .. } => SimulationStatus::Failed,
            Self::Ended { .. } => SimulationStatus::Ended,
            Self::FeedbackRecorded { .. } => SimulationStatus::FeedbackReady,
            Self::Archived { .. } => SimulationStatus::Archived,
            Self::AiCallRequested { service, .. } => match before? {
                // A retry takes a failed session back to where its call belonged.
                SimulationStatus::Failed => match service {
                    AiService::PatientInitial => SimulationStatus::Created,
                    AiService::PatientReply => SimulationStatus::InProgress,
                    AiService::FeedbackHotwash => SimulationStatus::Ended,
                },
                other @ (SimulationStatus::Created
                | SimulationStatus::InProgress
                | SimulationStatus::Ended
                | SimulationStatus::FeedbackReady
                | SimulationStatus::Archived) => other,
            },
            Self::AiCallCompleted { .. } => before?,
        })
    }

    /// True for events that always change the state (so a repeat is a forbidden move, not a
    /// no-op): creating, failing, ending, recording feedback, archiving.
    pub const fn moves(&self) -> bool {
        matches!(
            self,
            Self::Created { .. }
                | Self::AiCallFailed { .. }
                | Self::Ended { .. }
                | Self::FeedbackRecorded { .. }
                | Self::Archived { .. }
        )
    }

    /// When it happened.
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Created { at, .. }
            | Self::AiCallRequested { at, .. }
            | Self::AiCallCompleted { at, .. }
            | Self::AiCallFailed { at, .. }
            | Self::Ended { at, .. }
            | Self::FeedbackRecorded { at, .. }
            | Self::Archived { at } => *at,
            Self::MessagePosted { message } => message.at,
        }
    }
}

impl DomainEvent for SimulationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Created { .. } => "SimulationCreated",
            Self::AiCallRequested { .. } => "SimulationAiCallRequested",
            Self::AiCallCompleted { .. } => "SimulationAiCallCompleted",
            Self::AiCallFailed { .. } => "SimulationAiCallFailed",
            Self::MessagePosted { .. } => "SimulationMessagePosted",
            Self::Ended { .. } => "SimulationEnded",
            Self::FeedbackRecorded { .. } => "SimulationFeedbackRecorded",
            Self::Archived { .. } => "SimulationArchived",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}
