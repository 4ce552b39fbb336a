//! A transfer task: one study moved instance by instance, pseudonymized when asked.

use std::time::Instant;

use chronicle_aggregates::transfer::{
    TaskOutcome, TaskSpec, Transfer, TransferCommand, TransferJob, TransferSpec,
};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{failed, Ended, Runs, Started, TaskRef, TransferRunner, PROGRESS_EVERY};
use crate::transfer::pseudonymize::Pseudonymizer;

type Run = Ended<()>;

/// Why a task of a forgotten patient cannot be pseudonymized.
const FORGOTTEN: &str =
    "the patient's key is gone (the patient was forgotten): no pseudonym can be derived";

impl Runs<Transfer> for TransferRunner {
    async fn run_task(&self, started: Started, job: &TransferJob, stop: &CancellationToken) -> Run {
        match self.move_study(started, job, stop).await {
            Ok(ended) | Err(ended) => ended,
        }
    }
}

impl TransferRunner {
    /// The task's editor and the pseudonym it writes: the task's, else the job's, else one
    /// derived under the patient's key. A forgotten patient's task fails: its key is gone.
    async fn editor(
        &self,
        task: TaskRef,
        setup: &TransferSpec,
        spec: &TaskSpec,
    ) -> Result<(Pseudonymizer, String), Run> {
        let key = if setup.pseudonymize {
            let subject = format!("patient:{}", spec.patient_id);
            match self.vault.pseudonym_key(&subject).await {
                Ok(Some(key)) => Some(key),
                Ok(None) => {
                    return Err(Ended::Finished(
                        TaskOutcome::Failure,
                        Some(FORGOTTEN.into()),
                        0,
                        (),
                    ))
                }
                Err(error) => return Err(Ended::Transient(format!("the patient's key: {error}"))),
            }
        } else {
            None
        };
        let editor = Pseudonymizer::new(task.job, key, setup.protocol.clone());
        let pseudonym = spec
            .pseudonym
            .clone()
            .or_else(|| setup.pseudonym.clone())
            .or_else(|| editor.derived_pseudonym(&spec.patient_id))
            .unwrap_or_default();
        Ok((editor, pseudonym))
    }

    async fn move_study(
        &self,
        started: Started,
        job: &TransferJob,
        stop: &CancellationToken,
    ) -> Result<Run, Run> {
        let task: TaskRef = started.task;
        let Some(setup) = job.spec() else {
            return Err(Ended::Transient("the job has no set-up".into()));
        };
        let spec = usize::try_from(task.task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| setup.tasks.get(i))
            .ok_or_else(|| Ended::Transient(format!("the job has no task {}", task.task)))?;
        let (editor, pseudonym) = self.editor(task, setup, spec).await?;
        let source = self.server(&setup.source).await?;
        let destination = self.server(&setup.destination).await?;
        let study = &spec.study_instance_uid;
        let Some((patient, found)) = source.study(study).await.map_err(|e| failed(&e, 0))? else {
            return Ok(Ended::Finished(
                TaskOutcome::Failure,
                Some(format!("study {study} not found at {}", setup.source)),
                0,
                (),
            ));
        };
        // A mistyped study UID must not move another patient's study under this pseudonym.
        if patient.trim() != spec.patient_id.trim() {
            return Ok(Ended::Finished(
                TaskOutcome::Failure,
                Some(format!(
                    "study {study} belongs to another patient at {} than the task's PatientID",
                    setup.source
                )),
                0,
                (),
            ));
        }
        let (series, missing): (Vec<String>, Vec<String>) = if spec.series_instance_uids.is_empty()
        {
            (found, Vec::new())
        } else {
            spec.series_instance_uids
                .iter()
                .cloned()
                .partition(|s| found.contains(s))
        };
        if series.is_empty() {
            return Ok(Ended::Finished(
                TaskOutcome::Failure,
                Some(format!(
                    "none of the requested series of study {study} found at {}",
                    setup.source
                )),
                0,
                (),
            ));
        }
        let mut moved = 0_u32;
        let mut reported = Instant::now();
        for series_uid in &series {
            let instances = source
                .instances(study, series_uid)
                .await
                .map_err(|e| failed(&e, moved))?;
            for instance in instances {
                if stop.is_cancelled() {
                    return Ok(Ended::Interrupted);
                }
                if self.canceling(task).await {
                    return Ok(Ended::Finished(
                        TaskOutcome::Canceled,
                        Some("canceled".into()),
                        moved,
                        (),
                    ));
                }
                let file = source
                    .retrieve(study, series_uid, &instance)
                    .await
                    .map_err(|e| failed(&e, moved))?;
                let file = if editor.edits() {
                    editor.apply(&file, &pseudonym).map_err(|e| {
                        Ended::Finished(TaskOutcome::Failure, Some(e.to_string()), moved, ())
                    })?
                } else {
                    file
                };
                destination
                    .store(file)
                    .await
                    .map_err(|e| failed(&e, moved))?;
                moved += 1;
                if reported.elapsed() >= PROGRESS_EVERY {
                    reported = Instant::now();
                    let progress = TransferCommand::ReportProgress {
                        task: task.task,
                        run: Some(started.run),
                        count: moved,
                        at: Utc::now(),
                    };
                    if let Err(error) = self.command::<Transfer>(task, progress).await {
                        tracing::debug!(%error, "progress not recorded");
                    }
                }
            }
        }
        Ok(if missing.is_empty() {
            Ended::Finished(TaskOutcome::Success, None, moved, ())
        } else {
            Ended::Finished(
                TaskOutcome::Warning,
                Some(format!(
                    "series not found at {}: {}",
                    setup.source,
                    missing.join(", ")
                )),
                moved,
                (),
            )
        })
    }
}
