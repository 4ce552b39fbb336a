//! A simulation: a chat-driven clinical training session with an AI patient.
//!
//! Created with its set-up (which requests the patient's opening line), it runs while the
//! learner and the patient take turns, ends by the learner or its time limit (which requests
//! the feedback), and is ready once the feedback is recorded. An AI call that fails after its
//! retries fails the session until `RetryAiCall`. [`SimulationStatus::can_transition_to`] is
//! the table.
//!
//! A session ends once: after a failed feedback call only `RetryAiCall` goes on. An answer
//! that arrives after the session moved on (ended or archived meanwhile) is still audited,
//! without becoming a message.
//!
//! Ordering: messages carry a gap-free sequence number, and the learner may not post while
//! the patient's reply is pending (`ReplyPending`, a CONFLICT): a reply always answers the
//! conversation exactly as it stood, so a queued learner message could not be answered in
//! order. Every AI call is requested, then completed or failed, as events; recording an
//! answer twice for the same (call, output schema) records nothing the second time.

mod command;
mod error;
mod event;
mod status;
#[cfg(test)]
mod tests;
mod values;

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::{call_id, AiOutput, SimulationCommand};
pub use error::SimulationError;
pub use event::SimulationEvent;
pub use status::SimulationStatus;
pub use values::{
    AiCallFailure, AiCallRecord, AiService, AiSettings, Difficulty, EndReason, Feedback, Message,
    PatientProfile, Role, RubricScore, Scenario, SimulationSpec, TokenUsage, MAX_MESSAGE_CHARS,
    MAX_TIME_LIMIT_SECONDS,
};

use crate::Upcast;

/// An AI call the simulation waits for (or whose failure it is stuck on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCall {
    /// The call.
    pub call_id: Uuid,
    /// What it is for.
    pub service: AiService,
}

/// A simulation's state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Simulation {
    id: Option<Uuid>,
    owner: Option<String>,
    spec: Option<SimulationSpec>,
    status: Option<SimulationStatus>,
    messages: Vec<Message>,
    pending: Option<PendingCall>,
    failed: Option<PendingCall>,
    calls: u32,
    requested: BTreeSet<Uuid>,
    recorded: BTreeSet<(Uuid, String)>,
    ended: bool,
    ends_at: Option<DateTime<Utc>>,
    feedback: Option<Feedback>,
}

impl Simulation {
    /// The status, `None` before creation.
    pub fn status(&self) -> Option<SimulationStatus> {
        self.status
    }

    /// The simulation's id.
    pub fn id(&self) -> Option<Uuid> {
        self.id
    }

    /// The owning client.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    /// The set-up.
    pub fn spec(&self) -> Option<&SimulationSpec> {
        self.spec.as_ref()
    }

    /// The conversation so far, in order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The AI call being waited for.
    pub fn pending(&self) -> Option<PendingCall> {
        self.pending
    }

    /// When the time limit ends it.
    pub fn ends_at(&self) -> Option<DateTime<Utc>> {
        self.ends_at
    }

    /// The feedback, once recorded.
    pub fn feedback(&self) -> Option<&Feedback> {
        self.feedback.as_ref()
    }

    fn decide(&self, command: SimulationCommand) -> Result<Vec<SimulationEvent>, SimulationError> {
        if let SimulationCommand::Create {
            simulation_id,
            owner,
            spec,
            at,
        } = command
        {
            if self.id.is_some() {
                return Err(SimulationError::AlreadyCreated);
            }
            let spec = spec
                .validate()
                .map_err(|problems| SimulationError::InvalidSpec { problems })?;
            let ends_at = spec
                .time_limit_seconds
                .map(|seconds| at + chrono::Duration::seconds(i64::from(seconds)));
            return Ok(vec![
                SimulationEvent::Created {
                    simulation_id,
                    owner,
                    spec,
                    ends_at,
                    at,
                },
                SimulationEvent::AiCallRequested {
                    call_id: call_id(simulation_id, 1),
                    service: AiService::PatientInitial,
                    at,
                },
            ]);
        }
        let (Some(id), Some(status)) = (self.id, self.status) else {
            return Err(SimulationError::NotFound);
        };
        let next_call = |service, at| SimulationEvent::AiCallRequested {
            call_id: call_id(id, self.calls + 1),
            service,
            at,
        };
        let events = match command {
            SimulationCommand::Create { .. } => return Err(SimulationError::AlreadyCreated),
            SimulationCommand::PostMessage { text, at } => {
                if !matches!(
                    status,
                    SimulationStatus::Created | SimulationStatus::InProgress
                ) {
                    return Err(SimulationError::NotTakingMessages { status });
                }
                if text.trim().is_empty()
                    || text.chars().count() > MAX_MESSAGE_CHARS
                    || text.contains('\0')
                {
                    return Err(SimulationError::InvalidMessage {
                        max: MAX_MESSAGE_CHARS,
                    });
                }
                if self.ends_at.is_some_and(|end| at >= end) {
                    return Err(SimulationError::TimeUp);
                }
                if self.pending.is_some() {
                    return Err(SimulationError::ReplyPending);
                }
                vec![
                    self.message(Role::Learner, text, None, at),
                    next_call(AiService::PatientReply, at),
                ]
            }
            SimulationCommand::RecordAiResult { call, output, at } => {
                if !self.requested.contains(&call.call_id) {
                    return Err(SimulationError::UnknownCall {
                        call_id: call.call_id,
                    });
                }
                if self.recorded.contains(&(call.call_id, call.schema.clone())) {
                    return Ok(Vec::new());
                }
                let Some(pending) = self.pending.filter(|p| p.call_id == call.call_id) else {
                    // Answered after the session moved on (ended, archived): audited only.
                    return Ok(vec![SimulationEvent::AiCallCompleted { call, at }]);
                };
                if call.service != pending.service || call.schema != pending.service.schema() {
                    return Err(SimulationError::WrongOutput {
                        service: pending.service,
                    });
                }
                let call_id = call.call_id;
                let outcome = match (pending.service, output) {
                    (
                        AiService::PatientInitial | AiService::PatientReply,
                        AiOutput::PatientLine(text),
                    ) => self.message(Role::Patient, text, Some(call_id), at),
                    (AiService::FeedbackHotwash, AiOutput::Feedback(feedback)) => {
                        SimulationEvent::FeedbackRecorded {
                            feedback,
                            call_id,
                            at,
                        }
                    }
                    (service, AiOutput::PatientLine(_) | AiOutput::Feedback(_)) => {
                        return Err(SimulationError::WrongOutput { service })
                    }
                };
                vec![SimulationEvent::AiCallCompleted { call, at }, outcome]
            }
            SimulationCommand::RecordAiFailure { failure, at } => {
                if self.failed.is_some_and(|f| f.call_id == failure.call_id) {
                    return Ok(Vec::new());
                }
                if self.pending.is_none_or(|p| p.call_id != failure.call_id) {
                    return Err(SimulationError::UnknownCall {
                        call_id: failure.call_id,
                    });
                }
                vec![SimulationEvent::AiCallFailed { failure, at }]
            }
            SimulationCommand::RetryAiCall { at } => {
                let failed = self
                    .failed
                    .filter(|_| status == SimulationStatus::Failed)
                    .ok_or(SimulationError::NothingToRetry)?;
                let patient = failed.service != AiService::FeedbackHotwash;
                if patient && self.ends_at.is_some_and(|end| at >= end) {
                    // Its time is up: no more patient lines, the feedback instead.
                    vec![
                        SimulationEvent::Ended {
                            reason: EndReason::TimeLimit,
                            abandoned_call: None,
                            at,
                        },
                        next_call(AiService::FeedbackHotwash, at),
                    ]
                } else {
                    vec![next_call(failed.service, at)]
                }
            }
            SimulationCommand::End { .. } if self.ended => {
                return Err(SimulationError::InvalidTransition {
                    from: status,
                    to: SimulationStatus::Ended,
                })
            }
            SimulationCommand::End { reason, at } => vec![
                SimulationEvent::Ended {
                    reason,
                    abandoned_call: self.pending.map(|p| p.call_id),
                    at,
                },
                next_call(AiService::FeedbackHotwash, at),
            ],
            SimulationCommand::Archive { at } => vec![SimulationEvent::Archived { at }],
        };
        self.checked(status, events)
    }

    /// The next message of the conversation.
    fn message(
        &self,
        role: Role,
        text: String,
        call_id: Option<Uuid>,
        at: DateTime<Utc>,
    ) -> SimulationEvent {
        let seq = u32::try_from(self.messages.len()).unwrap_or(u32::MAX - 1) + 1;
        SimulationEvent::MessagePosted {
            message: Message {
                seq,
                role,
                text,
                call_id,
                at,
            },
        }
    }

    /// Checks each state change the events make against the transition table.
    fn checked(
        &self,
        mut status: SimulationStatus,
        events: Vec<SimulationEvent>,
    ) -> Result<Vec<SimulationEvent>, SimulationError> {
        for event in &events {
            let Some(to) = event.status_after(Some(status)) else {
                return Err(SimulationError::NotFound);
            };
            if (to != status || event.moves()) && !status.can_transition_to(to) {
                return Err(SimulationError::InvalidTransition { from: status, to });
            }
            status = to;
        }
        Ok(events)
    }
}

impl Aggregate for Simulation {
    const TYPE: &'static str = "Simulation";
    type Command = SimulationCommand;
    type Event = SimulationEvent;
    type Error = SimulationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.status = event.status_after(self.status).or(self.status);
        match event {
            SimulationEvent::Created {
                simulation_id,
                owner,
                spec,
                ends_at,
                ..
            } => {
                self.id = Some(simulation_id);
                self.owner = Some(owner);
                self.spec = Some(spec);
                self.ends_at = ends_at;
            }
            SimulationEvent::AiCallRequested {
                call_id, service, ..
            } => {
                self.requested.insert(call_id);
                self.pending = Some(PendingCall { call_id, service });
                self.failed = None;
                self.calls += 1;
            }
            SimulationEvent::AiCallCompleted { call, .. } => {
                if self.pending.is_some_and(|p| p.call_id == call.call_id) {
                    self.pending = None;
                }
                self.recorded.insert((call.call_id, call.schema));
            }
            SimulationEvent::AiCallFailed { .. } => self.failed = self.pending.take(),
            SimulationEvent::MessagePosted { message } => self.messages.push(message),
            SimulationEvent::Ended { .. } => {
                self.pending = None;
                self.ended = true;
            }
            SimulationEvent::Archived { .. } => self.pending = None,
            SimulationEvent::FeedbackRecorded { feedback, .. } => self.feedback = Some(feedback),
        }
    }
}

impl Upcast for Simulation {}

impl crate::Effects for Simulation {}
