//! A simulation's states and the one table of allowed transitions.

use serde::{Deserialize, Serialize};

/// Where a simulation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SimulationStatus {
    /// Created; the patient's opening line is being generated.
    Created,
    /// The conversation is under way (the first message, the patient's opening line, is in).
    InProgress,
    /// Ended by the learner or the time limit; feedback is being generated.
    Ended,
    /// The feedback (hotwash) is recorded.
    FeedbackReady,
    /// An AI call failed after its retries; `retryAiCall` takes it back.
    Failed,
    /// Archived by its owner (once ended, or given up after a failure).
    Archived,
}

impl SimulationStatus {
    /// Every status.
    pub const ALL: [Self; 6] = [
        Self::Created,
        Self::InProgress,
        Self::Ended,
        Self::FeedbackReady,
        Self::Failed,
        Self::Archived,
    ];

    /// The transition table: true when a simulation may move from `self` to `to`.
    ///
    /// A failed simulation returns, on retry, to the state its failed call belonged to
    /// (created, in progress, or ended awaiting feedback); it may also be ended or archived.
    pub const fn can_transition_to(self, to: Self) -> bool {
        use SimulationStatus::{Archived, Created, Ended, Failed, FeedbackReady, InProgress};
        matches!(
            (self, to),
            (Created, InProgress)
                | (Created, Ended)
                | (Created, Failed)
                | (InProgress, Ended)
                | (InProgress, Failed)
                | (Ended, FeedbackReady)
                | (Ended, Failed)
                | (Ended, Archived)
                | (FeedbackReady, Archived)
                | (Failed, Created)
                | (Failed, InProgress)
                | (Failed, Ended)
                | (Failed, Archived)
        )
    }

    /// The wire form, e.g. `in_progress`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::InProgress => "in_progress",
            Self::Ended => "ended",
            Self::FeedbackReady => "feedback_ready",
            Self::Failed => "failed",
            Self::Archived => "archived",
        }
    }
}
