//! A transfer job: DICOM studies to move from one PACS to another, one task per study,
//! optionally pseudonymized. Its lifecycle is the shared [`Job`]; this
//! module holds what is its own: the set-up and its rules.

mod values;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobCommand, JobEvent, JobKind};

pub use crate::job::{
    JobError as TransferError, JobStatus, Requeue, TaskOutcome, TaskState, TaskStatus, MAX_RETRIES,
};
pub use values::{is_lo, is_uid, TaskSpec, TransferSpec, TrialProtocol, MAX_TASKS};

/// The transfer kind of job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer;

impl JobKind for Transfer {
    const TYPE: &'static str = "TransferJob";
    const NAME: &'static str = "Transfer";
    type Spec = TransferSpec;
    type Output = ();

    fn validate(spec: TransferSpec) -> Result<TransferSpec, Vec<String>> {
        spec.validate()
    }

    fn task_count(spec: &TransferSpec) -> usize {
        spec.tasks.len()
    }
}

/// A transfer job.
pub type TransferJob = Job<Transfer>;
/// A command to a transfer job.
pub type TransferCommand = JobCommand<Transfer>;
/// A transfer job's event.
pub type TransferEvent = JobEvent<Transfer>;
