//! What a transfer job is made of: its set-up and its tasks, with their validation rules.

use serde::{Deserialize, Serialize};

/// The most tasks one job holds (its creation is one event).
pub const MAX_TASKS: usize = 10_000;
/// The longest a DICOM UID may be.
const MAX_UID: usize = 64;
/// The longest a DICOM LO value (patient id, pseudonym, protocol id) may be.
const MAX_LO: usize = 64;

/// One study to move: a task of the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The patient's id at the source.
    pub patient_id: String,
    /// The study to move.
    pub study_instance_uid: String,
    /// Only these series (all when empty).
    #[serde(default)]
    pub series_instance_uids: Vec<String>,
    /// This task's pseudonym, overriding the job's.
    #[serde(default)]
    pub pseudonym: Option<String>,
}

/// The clinical trial protocol stamped into moved data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialProtocol {
    /// Clinical Trial Protocol ID (0012,0020).
    pub id: String,
    /// Clinical Trial Protocol Name (0012,0021).
    pub name: Option<String>,
}

/// A transfer job's set-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferSpec {
    /// The registered server studies come from.
    pub source: String,
    /// The registered server they go to.
    pub destination: String,
    /// Replace identifying attributes and UIDs on the way.
    pub pseudonymize: bool,
    /// The pseudonym for every patient of the job (else one is derived per patient).
    pub pseudonym: Option<String>,
    /// Stamped into the data, when given.
    pub protocol: Option<TrialProtocol>,
    /// Runs before non-urgent jobs.
    pub urgent: bool,
    /// The studies to move.
    pub tasks: Vec<TaskSpec>,
}

/// True when `uid` is a valid DICOM UID: 1–64 characters, dot-separated numeric components
/// without leading zeros.
pub fn is_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= MAX_UID
        && uid.split('.').all(|part| {
            !part.is_empty()
                && part.bytes().all(|b| b.is_ascii_digit())
                && (part == "0" || !part.starts_with('0'))
        })
}

/// True when `value` fits a DICOM LO value: 1–64 characters, no backslash, no control
/// characters, not only spaces.
pub fn is_lo(value: &str) -> bool {
    !value.trim().is_empty()
        && value.chars().count() <= MAX_LO
        && !value.chars().any(|c| c == '\\' || c.is_control())
}

impl TaskSpec {
    /// Every rule this task breaks, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !is_lo(&self.patient_id) {
            problems.push(
                "PatientID must be 1 to 64 characters, without backslash or control characters"
                    .into(),
            );
        }
        if !is_uid(&self.study_instance_uid) {
            problems.push(format!(
                "StudyInstanceUID {:?} is not a DICOM UID",
                self.study_instance_uid
            ));
        }
        for series in &self.series_instance_uids {
            if !is_uid(series) {
                problems.push(format!("SeriesInstanceUID {series:?} is not a DICOM UID"));
            }
        }
        if self.pseudonym.as_deref().is_some_and(|p| !is_lo(p)) {
            problems.push(
                "Pseudonym must be 1 to 64 characters, without backslash or control characters"
                    .into(),
            );
        }
        problems
    }
}

impl TransferSpec {
    /// The spec if it breaks no rule, else every broken rule (tasks numbered from 1).
    ///
    /// # Errors
    /// Each broken rule, in order.
    pub fn validate(self) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        for (field, name) in [(&self.source, "source"), (&self.destination, "destination")] {
            if !is_lo(field) {
                problems.push(format!("{name} must name a registered DICOM server"));
            }
        }
        if self.source == self.destination {
            problems.push("source and destination must differ".into());
        }
        if self.pseudonym.as_deref().is_some_and(|p| !is_lo(p)) {
            problems.push(
                "pseudonym must be 1 to 64 characters, without backslash or control characters"
                    .into(),
            );
        }
        if let Some(protocol) = &self.protocol {
            if !is_lo(&protocol.id) || protocol.name.as_deref().is_some_and(|n| !is_lo(n)) {
                problems.push("the trial protocol id and name must be 1 to 64 characters".into());
            }
        }
        if self.tasks.is_empty() || self.tasks.len() > MAX_TASKS {
            problems.push(format!("a job holds 1 to {MAX_TASKS} tasks"));
        }
        for (n, task) in self.tasks.iter().enumerate() {
            problems.extend(
                task.problems()
                    .into_iter()
                    .map(|p| format!("task {}: {p}", n + 1)),
            );
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }
}
