//! What can be asked of a simulation. Times, ids and AI answers arrive in the command.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{AiCallFailure, AiCallRecord, EndReason, Feedback, SimulationSpec};

/// What an AI call produced, already parsed against its output schema by the responder.
#[derive(Debug, Clone, PartialEq)]
pub enum AiOutput {
    /// The patient's line.
    PatientLine(String),
    /// The hotwash.
    Feedback(Feedback),
}

/// A simulation's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum SimulationCommand {
    /// Set up a new session (and request the patient's opening line).
    Create {
        /// The new simulation's id.
        simulation_id: Uuid,
        /// The owning client.
        owner: String,
        /// The validated set-up.
        spec: SimulationSpec,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The learner says something (and the patient's reply is requested).
    PostMessage {
        /// What the learner said.
        text: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record an AI call's answer; a repeat for the same (call, schema) changes nothing.
    RecordAiResult {
        /// The audit record.
        call: AiCallRecord,
        /// The parsed output.
        output: AiOutput,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record that an AI call failed after its retries.
    RecordAiFailure {
        /// The audit record.
        failure: AiCallFailure,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Request the failed AI call again, as a new call.
    RetryAiCall {
        /// Now.
        at: DateTime<Utc>,
    },
    /// End the session (and request the feedback).
    End {
        /// Why.
        reason: EndReason,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Archive the finished session.
    Archive {
        /// Now.
        at: DateTime<Utc>,
    },
}

/// The id of a simulation's `n`-th AI call: derived, so a repeated command makes the same one.
pub fn call_id(simulation_id: Uuid, n: u32) -> Uuid {
    Uuid::new_v5(&simulation_id, format!("ai-call/{n}").as_bytes())
}
