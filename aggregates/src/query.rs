//! A query job (batch query): rows of search criteria run as QIDO-RS study searches against a
//! source server, one task per row, each finished task recording the studies it found. Its
//! lifecycle is the shared [`Job`], the same states and status rule as
//! transfers; its results can become a transfer job's tasks.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobCommand, JobEvent, JobKind};
use crate::transfer::{is_lo, MAX_TASKS};

pub use crate::job::{JobError as QueryError, JobStatus, TaskOutcome, TaskStatus};

/// The most studies one row records; more is a warning to narrow the criteria.
pub const MAX_MATCHES: usize = 1_000;

/// One row of criteria: every given criterion must match (wildcards `*` and `?` in names
/// and descriptions).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyQuery {
    /// PatientID.
    pub patient_id: Option<String>,
    /// PatientName, e.g. `Doe^J*`.
    pub patient_name: Option<String>,
    /// PatientBirthDate, `YYYYMMDD`.
    pub patient_birth_date: Option<String>,
    /// AccessionNumber.
    pub accession_number: Option<String>,
    /// StudyDate from, `YYYYMMDD` (inclusive).
    pub study_date_from: Option<String>,
    /// StudyDate to, `YYYYMMDD` (inclusive).
    pub study_date_to: Option<String>,
    /// ModalitiesInStudy: any of these.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// StudyDescription.
    pub study_description: Option<String>,
}

fn date(value: &str) -> Option<NaiveDate> {
    (value.len() == 8)
        .then(|| NaiveDate::parse_from_str(value, "%Y%m%d").ok())
        .flatten()
}

impl StudyQuery {
    /// Every rule this row breaks.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let texts = [
            ("PatientID", &self.patient_id),
            ("PatientName", &self.patient_name),
            ("AccessionNumber", &self.accession_number),
            ("StudyDescription", &self.study_description),
        ];
        for (name, value) in texts {
            if value.as_deref().is_some_and(|v| !is_lo(v)) {
                problems.push(format!(
                    "{name} must be 1 to 64 characters, without backslash or control characters"
                ));
            }
        }
        let dates = [
            ("PatientBirthDate", &self.patient_birth_date),
            ("StudyDate from", &self.study_date_from),
            ("StudyDate to", &self.study_date_to),
        ];
        for (name, value) in dates {
            if value.as_deref().is_some_and(|v| date(v).is_none()) {
                problems.push(format!("{name} must be a date as YYYYMMDD"));
            }
        }
        let range = (
            self.study_date_from.as_deref().and_then(date),
            self.study_date_to.as_deref().and_then(date),
        );
        if let (Some(from), Some(to)) = range {
            if from > to {
                problems.push("the StudyDate range ends before it starts".into());
            }
        }
        if self.modalities.iter().any(|m| {
            m.is_empty()
                || m.len() > 16
                || !m
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        }) {
            problems.push("Modalities must be DICOM codes such as CT or MR".into());
        }
        let any = texts.iter().any(|(_, v)| v.is_some())
            || self.patient_birth_date.is_some()
            || self.study_date_from.is_some()
            || self.study_date_to.is_some()
            || !self.modalities.is_empty();
        if !any {
            problems.push("give at least one criterion".into());
        }
        problems
    }
}

/// A query job's set-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuerySpec {
    /// The registered server searched.
    pub source: String,
    /// The rows of criteria, a task each.
    pub queries: Vec<StudyQuery>,
}

impl QuerySpec {
    /// The spec if it breaks no rule, else every broken rule (rows numbered from 1).
    ///
    /// # Errors
    /// Each broken rule, in order.
    pub fn validate(self) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        if !is_lo(&self.source) {
            problems.push("source must name a registered DICOM server".into());
        }
        if self.queries.is_empty() || self.queries.len() > MAX_TASKS {
            problems.push(format!("a query job holds 1 to {MAX_TASKS} rows"));
        }
        for (n, query) in self.queries.iter().enumerate() {
            problems.extend(
                query
                    .problems()
                    .into_iter()
                    .map(|p| format!("query {}: {p}", n + 1)),
            );
        }
        if problems.is_empty() {
            Ok(self)
        } else {
            Err(problems)
        }
    }
}

/// A study a row found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyMatch {
    /// PatientID.
    pub patient_id: String,
    /// StudyInstanceUID.
    pub study_instance_uid: String,
    /// StudyDate, `YYYYMMDD`.
    pub study_date: Option<String>,
    /// ModalitiesInStudy.
    pub modalities: Vec<String>,
    /// StudyDescription.
    pub description: Option<String>,
    /// NumberOfStudyRelatedSeries.
    pub series: Option<u32>,
    /// NumberOfStudyRelatedInstances.
    pub instances: Option<u32>,
}

/// The query kind of job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query;

impl JobKind for Query {
    const TYPE: &'static str = "QueryJob";
    const NAME: &'static str = "Query";
    type Spec = QuerySpec;
    type Output = Vec<StudyMatch>;

    fn validate(spec: QuerySpec) -> Result<QuerySpec, Vec<String>> {
        spec.validate()
    }

    fn task_count(spec: &QuerySpec) -> usize {
        spec.queries.len()
    }
}

/// A query job.
pub type QueryJob = Job<Query>;
/// A command to a query job.
pub type QueryCommand = JobCommand<Query>;
/// A query job's event.
pub type QueryEvent = JobEvent<Query>;

#[cfg(test)]
mod tests {
    use super::{QuerySpec, StudyQuery};

    #[test]
    fn rows_need_a_criterion_and_well_formed_values() {
        let good = StudyQuery {
            patient_name: Some("Doe^J*".into()),
            study_date_from: Some("20260101".into()),
            study_date_to: Some("20260131".into()),
            modalities: vec!["CT".into()],
            ..StudyQuery::default()
        };
        assert!(good.problems().is_empty(), "{:?}", good.problems());
        let bad = StudyQuery {
            patient_birth_date: Some("1980-01-01".into()),
            study_date_from: Some("20260201".into()),
            study_date_to: Some("20260101".into()),
            modalities: vec!["ct".into()],
            ..StudyQuery::default()
        };
        assert_eq!(bad.problems().len(), 3, "{:?}", bad.problems());
        assert_eq!(
            StudyQuery::default().problems(),
            ["give at least one criterion"]
        );
        let spec = QuerySpec {
            source: "pacs".into(),
            queries: vec![good, StudyQuery::default()],
        };
        let problems = spec.validate().unwrap_err();
        assert_eq!(problems, ["query 2: give at least one criterion"]);
    }
}
