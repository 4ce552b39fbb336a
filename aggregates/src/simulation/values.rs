//! What a simulation is made of: its validated set-up, messages, AI calls and feedback.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Longest accepted message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 10_000;
/// Longest time limit, in seconds (8 hours).
pub const MAX_TIME_LIMIT_SECONDS: u32 = 28_800;

/// How hard the case is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Difficulty {
    /// A textbook presentation.
    Easy,
    /// Some distractors.
    Medium,
    /// Atypical and evasive.
    Hard,
}

impl Difficulty {
    /// The wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Easy => "easy",
            Self::Medium => "medium",
            Self::Hard => "hard",
        }
    }
}

/// The clinical case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    /// The diagnosis the learner should reach (never told to the learner).
    pub diagnosis: String,
    /// Why the patient came.
    pub chief_complaint: String,
    /// How hard it is.
    pub difficulty: Difficulty,
}

/// The simulated patient (personal data, even though fictional by intent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientProfile {
    /// Name.
    pub name: String,
    /// Age in years.
    pub age: u16,
    /// Sex.
    pub sex: String,
    /// Medical and social history.
    pub history: String,
}

/// The model playing the patient, and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiSettings {
    /// The model, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Sampling temperature, 0 to 2.
    pub temperature: Option<f64>,
    /// Most tokens per reply.
    pub max_tokens: Option<u32>,
}

/// A simulation's validated set-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimulationSpec {
    /// The learner (a trainee clinician).
    pub learner_id: String,
    /// The case.
    pub scenario: Scenario,
    /// The patient.
    pub patient: PatientProfile,
    /// The AI.
    pub ai: AiSettings,
    /// Seconds until the session ends by itself.
    pub time_limit_seconds: Option<u32>,
}

impl SimulationSpec {
    /// Checks every rule and returns all broken ones.
    ///
    /// # Errors
    /// One message per broken rule.
    pub fn validate(self) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut text = |what: &str, value: &str, max: usize| {
            if value.trim().is_empty() || value.chars().count() > max || value.contains('\0') {
                problems.push(format!("{what} must be 1 to {max} characters without NUL"));
            }
        };
        text("learner id", &self.learner_id, 200);
        text("diagnosis", &self.scenario.diagnosis, 500);
        text("chief complaint", &self.scenario.chief_complaint, 2_000);
        text("patient name", &self.patient.name, 200);
        text("patient sex", &self.patient.sex, 50);
        text("patient history", &self.patient.history, 20_000);
        text("model", &self.ai.model, 200);
        if self.patient.age > 130 {
            problems.push("patient age must be 0 to 130".into());
        }
        if self
            .ai
            .temperature
            .is_some_and(|t| !(0.0..=2.0).contains(&t))
        {
            problems.push("temperature must be 0 to 2".into());
        }
        if self.ai.max_tokens.is_some_and(|n| n == 0 || n > 32_000) {
            problems.push("max tokens must be 1 to 32000".into());
        }
        if self
            .time_limit_seconds
            .is_some_and(|m| m == 0 || m > MAX_TIME_LIMIT_SECONDS)
        {
            problems.push(format!(
                "time limit must be 1 to {MAX_TIME_LIMIT_SECONDS} seconds"
            ));
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }
}

/// Who said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The learner.
    Learner,
    /// The AI patient.
    Patient,
}

impl Role {
    /// The wire form.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Learner => "learner",
            Self::Patient => "patient",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Its place: 1, 2, 3, … with no gaps.
    pub seq: u32,
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// The AI call that produced it (patient messages).
    pub call_id: Option<Uuid>,
    /// When it was recorded.
    pub at: DateTime<Utc>,
}

/// What an AI call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AiService {
    /// The patient's opening line.
    #[serde(rename = "patient.initial")]
    PatientInitial,
    /// The patient's reply to the learner.
    #[serde(rename = "patient.reply")]
    PatientReply,
    /// The feedback at the end.
    #[serde(rename = "feedback.hotwash")]
    FeedbackHotwash,
}

impl AiService {
    /// The service name, e.g. `patient.reply`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::PatientInitial => "patient.initial",
            Self::PatientReply => "patient.reply",
            Self::FeedbackHotwash => "feedback.hotwash",
        }
    }

    /// The name of the output schema its answer must follow.
    pub const fn schema(self) -> &'static str {
        match self {
            Self::PatientInitial | Self::PatientReply => "patient_reply",
            Self::FeedbackHotwash => "hotwash",
        }
    }
}

/// Tokens an AI call used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    /// Prompt tokens.
    pub prompt: u64,
    /// Completion tokens.
    pub completion: u64,
}

/// A completed AI call, as audited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiCallRecord {
    /// The call.
    pub call_id: Uuid,
    /// What it was for.
    pub service: AiService,
    /// The model.
    pub model: String,
    /// The exact messages sent.
    pub request: Value,
    /// The answer's text, as received.
    pub response_text: String,
    /// The structured output, validated against `schema`.
    pub output: Value,
    /// The output schema's name.
    pub schema: String,
    /// Tokens used.
    pub usage: TokenUsage,
    /// Why generation stopped, e.g. `stop`.
    pub finish_reason: String,
    /// How long the call took (the successful attempt), in milliseconds.
    pub latency_ms: u64,
    /// Attempts it took.
    pub attempts: u32,
}

/// A failed AI call, as audited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiCallFailure {
    /// The call.
    pub call_id: Uuid,
    /// The exact messages sent.
    pub request: Value,
    /// The provider's error (the last attempt's).
    pub error: String,
    /// Attempts made.
    pub attempts: u32,
    /// How long the attempts took, in milliseconds.
    pub latency_ms: u64,
}

/// One rubric item's score in the feedback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RubricScore {
    /// The rubric item, e.g. `history taking`.
    pub item: String,
    /// 0 to 5.
    pub score: u8,
    /// Why.
    pub comment: String,
}

/// The hotwash: the feedback at the end of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// What went well.
    pub went_well: Vec<String>,
    /// What was missed.
    pub missed: Vec<String>,
    /// A score per rubric item.
    pub scores: Vec<RubricScore>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The learner ended it.
    Learner,
    /// Its time limit passed.
    TimeLimit,
}
