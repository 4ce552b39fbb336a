//! What happened to a batch. Event types and versions are a contract: never rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{BatchEntry, BatchKey, BatchStatus, CloseReason};

/// A batch's events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum BatchEvent {
    /// The batch opened for one (owner, endpoint, model).
    Opened {
        /// The batch's id.
        batch_id: Uuid,
        /// Whose requests, for which endpoint and model.
        key: BatchKey,
        /// When.
        at: DateTime<Utc>,
    },
    /// Requests joined the batch. This is where a submission is recorded: the batch stream
    /// holds every request's body, so accepting requests is one atomic append.
    RequestsAdded {
        /// The requests, in submission order.
        entries: Vec<BatchEntry>,
        /// Bytes these requests add to the input file.
        size_bytes: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its owner withdrew a request while the batch was building: it will not be sent.
    RequestWithdrawn {
        /// The withdrawn request.
        request_id: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The batch stopped accepting requests; new ones go to `successor`.
    Closed {
        /// Why it closed.
        reason: CloseReason,
        /// The id of the batch that follows for the same key.
        successor: Uuid,
        /// When.
        at: DateTime<Utc>,
    },
    /// The input file was uploaded to the provider.
    InputUploaded {
        /// The provider's file id.
        input_file_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider accepted the batch.
    SubmittedToProvider {
        /// The provider's batch id.
        provider_batch_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported progress: a new provider status or new request counts. Recorded
    /// only when something changed, never once per poll.
    ProviderProgressed {
        /// The provider's status, e.g. `in_progress`.
        provider_status: String,
        /// Requests in the provider batch.
        total: u64,
        /// Requests with a response so far.
        completed: u64,
        /// Requests with an error so far.
        failed: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider finished the batch.
    ProviderCompleted {
        /// The provider's output file, if any request succeeded.
        output_file_id: Option<String>,
        /// The provider's error file, if any request failed.
        error_file_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
    /// Downloading results started.
    DownloadStarted {
        /// When.
        at: DateTime<Utc>,
    },
    /// Every request's result or error was recorded.
    ResultsDownloaded {
        /// Requests with a response.
        succeeded: u64,
        /// Requests with an error.
        failed: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// Delivering results started (again).
    DeliveryStarted {
        /// When.
        at: DateTime<Utc>,
    },
    /// Every request is settled; how many results reached their owners and how many not.
    DeliveryFinished {
        /// Results delivered or consumed.
        delivered: u64,
        /// Results whose delivery failed, or whose owner reported them unusable.
        undelivered: u64,
        /// When.
        at: DateTime<Utc>,
    },
    /// The upload or the provider failed.
    Failed {
        /// The error, as reported.
        error: Value,
        /// When.
        at: DateTime<Utc>,
    },
    /// Its owner cancelled it.
    Cancelled {
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider was asked to cancel a batch its owner cancelled while it was there.
    ProviderCancelRequested {
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider's completion window ran out; what finished is in these files.
    Expired {
        /// Results of the requests that finished in time, if any.
        output_file_id: Option<String>,
        /// Errors of the requests that finished in time, if any.
        error_file_id: Option<String>,
        /// When.
        at: DateTime<Utc>,
    },
}

impl BatchEvent {
    /// The status the batch is in after this event.
    pub const fn status(&self) -> BatchStatus {
        match self {
            Self::Opened { .. } | Self::RequestsAdded { .. } | Self::RequestWithdrawn { .. } => {
                BatchStatus::Building
            }
            Self::Closed { .. } => BatchStatus::Uploading,
            Self::InputUploaded { .. } => BatchStatus::Uploaded,
            Self::SubmittedToProvider { .. } | Self::ProviderProgressed { .. } => {
                BatchStatus::ProviderProcessing
            }
            Self::ProviderCompleted { .. } => BatchStatus::ProviderCompleted,
            Self::DownloadStarted { .. } => BatchStatus::Downloading,
            Self::ResultsDownloaded { .. } => BatchStatus::ReadyToDeliver,
            Self::DeliveryStarted { .. } => BatchStatus::Delivering,
            Self::DeliveryFinished { .. } => BatchStatus::Done,
            Self::Failed { .. } => BatchStatus::Failed,
            Self::Cancelled { .. } | Self::ProviderCancelRequested { .. } => BatchStatus::Cancelled,
            Self::Expired { .. } => BatchStatus::Expired,
        }
    }

    /// When it happened.
    pub const fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Opened { at, .. }
            | Self::RequestsAdded { at, .. }
            | Self::RequestWithdrawn { at, .. }
            | Self::Closed { at, .. }
            | Self::InputUploaded { at, .. }
            | Self::SubmittedToProvider { at, .. }
            | Self::ProviderProgressed { at, .. }
            | Self::ProviderCompleted { at, .. }
            | Self::DownloadStarted { at }
            | Self::ResultsDownloaded { at, .. }
            | Self::DeliveryStarted { at }
            | Self::DeliveryFinished { at, .. }
            | Self::Failed { at, .. }
            | Self::Cancelled { at }
            | Self::ProviderCancelRequested { at }
            | Self::Expired { at, .. } => *at,
        }
    }
}

impl DomainEvent for BatchEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Opened { .. } => "BatchOpened",
            Self::RequestsAdded { .. } => "BatchRequestsAdded",
            Self::RequestWithdrawn { .. } => "BatchRequestWithdrawn",
            Self::Closed { .. } => "BatchClosed",
            Self::InputUploaded { .. } => "BatchInputUploaded",
            Self::SubmittedToProvider { .. } => "BatchSubmittedToProvider",
            Self::ProviderProgressed { .. } => "BatchProviderProgressed",
            Self::ProviderCompleted { .. } => "BatchProviderCompleted",
            Self::DownloadStarted { .. } => "BatchDownloadStarted",
            Self::ResultsDownloaded { .. } => "BatchResultsDownloaded",
            Self::DeliveryStarted { .. } => "BatchDeliveryStarted",
            Self::DeliveryFinished { .. } => "BatchDeliveryFinished",
            Self::Failed { .. } => "BatchFailed",
            Self::Cancelled { .. } => "BatchCancelled",
            Self::ProviderCancelRequested { .. } => "BatchProviderCancelRequested",
            Self::Expired { .. } => "BatchExpired",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}
