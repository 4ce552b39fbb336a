//! A query task: its row's study search, with what it found as the task's output.

use chronicle_aggregates::query::{Query, QueryJob, StudyMatch, MAX_MATCHES};
use chronicle_aggregates::transfer::TaskOutcome;
use tokio_util::sync::CancellationToken;

use super::{failed, Ended, Runs, Started, TransferRunner};

impl Runs<Query> for TransferRunner {
    async fn run_task(
        &self,
        started: Started,
        job: &QueryJob,
        _stop: &CancellationToken,
    ) -> Ended<Vec<StudyMatch>> {
        let Some(setup) = job.spec() else {
            return Ended::Transient("the job has no set-up".into());
        };
        let Some(query) = usize::try_from(started.task.task)
            .ok()
            .and_then(|n| n.checked_sub(1))
            .and_then(|i| setup.queries.get(i))
        else {
            return Ended::Transient(format!("the job has no row {}", started.task.task));
        };
        let source = match self.server(&setup.source).await {
            Ok(source) => source,
            Err(ended) => return ended,
        };
        let mut found = match source.find_studies(query, MAX_MATCHES + 1).await {
            Ok(found) => found,
            Err(error) => return failed(&error, 0),
        };
        let (outcome, message) = if found.is_empty() {
            (TaskOutcome::Warning, Some("no study matched".to_owned()))
        } else if found.len() > MAX_MATCHES {
            found.truncate(MAX_MATCHES);
            let message = format!("more than {MAX_MATCHES} studies matched: narrow the criteria");
            (TaskOutcome::Warning, Some(message))
        } else {
            (TaskOutcome::Success, None)
        };
        let count = u32::try_from(found.len()).unwrap_or(u32::MAX);
        Ended::Finished(outcome, message, count, found)
    }
}
