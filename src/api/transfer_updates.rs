//! Live updates of a transfer job: status changes and task progress as they are recorded.

use async_graphql::{Context, SimpleObject, Subscription};
use chronicle_aggregates::transfer::{Transfer, TransferEvent};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use uuid::Uuid;

use super::event_log::aggregate_tail;
use super::{ApiError, Caller};
use crate::transfer::TransferActions;

/// A change to a transfer job, as it is recorded.
#[derive(SimpleObject)]
pub(crate) struct TransferJobUpdate {
    /// Resume after this update with `after`.
    cursor: String,
    /// The event, e.g. `TransferTaskProgressed`.
    event_type: String,
    /// The job's status after a status change.
    job_status: Option<String>,
    /// The task concerned.
    task: Option<i32>,
    /// The task's status after it.
    task_status: Option<String>,
    /// Instances the task has stored.
    instances: Option<i32>,
    /// The task's message.
    message: Option<String>,
    /// When.
    at: DateTime<Utc>,
}

fn update(cursor: String, event_type: String, event: TransferEvent) -> TransferJobUpdate {
    let at = event.at();
    let number = |n: u32| Some(i32::try_from(n).unwrap_or(i32::MAX));
    let mut update = TransferJobUpdate {
        cursor,
        event_type,
        job_status: None,
        task: None,
        task_status: None,
        instances: None,
        message: None,
        at,
    };
    match event {
        TransferEvent::StatusChanged { to, .. } => update.job_status = Some(to.as_str().into()),
        TransferEvent::TaskStarted { task, .. } => {
            update.task = number(task);
            update.task_status = Some("in_progress".into());
            update.instances = Some(0);
        }
        TransferEvent::TaskProgressed {
            task,
            count: instances,
            ..
        } => {
            update.task = number(task);
            update.instances = number(instances);
        }
        TransferEvent::TaskFinished {
            task,
            status,
            message,
            count: instances,
            ..
        } => {
            update.task = number(task);
            update.task_status = Some(status.as_str().into());
            update.instances = number(instances);
            update.message = message;
        }
        TransferEvent::TaskRetryScheduled { task, reason, .. }
        | TransferEvent::TaskInterrupted { task, reason, .. } => {
            update.task = number(task);
            update.task_status = Some("pending".into());
            update.message = Some(reason);
        }
        TransferEvent::Created { .. }
        | TransferEvent::Verified { .. }
        | TransferEvent::CancelRequested { .. }
        | TransferEvent::TasksRequeued { .. } => {}
    }
    update
}

/// Transfer subscriptions.
#[derive(Default)]
pub(crate) struct TransferSubscription;

#[Subscription]
impl TransferSubscription {
    /// Every change to one of your transfer jobs — status changes and task progress — from
    /// its creation (or after `after`), then live. Errors: `NOT_FOUND`, `VALIDATION`.
    async fn transfer_job_updated(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        #[graphql(desc = "Resume after this cursor; from the job's first event when omitted.")]
        after: Option<String>,
    ) -> Result<impl Stream<Item = TransferJobUpdate>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        ctx.data_unchecked::<TransferActions>()
            .visible::<Transfer>(&caller.command_context(), caller.authority, id)
            .await?;
        let stream = aggregate_tail(ctx, "TransferJob", id, after.as_deref()).await?;
        Ok(stream.filter_map(|event| async move {
            let cursor = event.cursor.to_string();
            let event_type = event.event_type.clone();
            let decoded = event.decode::<TransferEvent>().ok()?;
            Some(update(cursor, event_type, decoded))
        }))
    }
}
