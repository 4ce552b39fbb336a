//! What can be asked of a batch. Times, ids and provider facts arrive in the command.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::{BatchEntry, BatchKey, BatchLimits, CloseReason};

/// A batch's commands.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCommand {
    /// Add requests, opening the batch if it does not exist yet. All or nothing.
    Add {
        /// The batch's id (used when opening).
        batch_id: Uuid,
        /// The batch's key; must match an existing batch's.
        key: BatchKey,
        /// The requests to add.
        entries: Vec<BatchEntry>,
        /// The limits in force.
        limits: BatchLimits,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Withdraw a request before the batch closes (its owner cancelled it).
    WithdrawRequest {
        /// The request; it must be in this batch.
        request_id: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Stop accepting requests; later ones go to `successor`.
    Close {
        /// Why.
        reason: CloseReason,
        /// The id of the next batch for the same key.
        successor: Uuid,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The input file is at the provider.
    MarkUploaded {
        /// The provider's file id.
        input_file_id: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The provider accepted the batch.
    MarkSubmitted {
        /// The provider's batch id.
        provider_batch_id: String,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record the provider's progress (status or counts changed).
    RecordProviderProgress {
        /// The provider's status, e.g. `in_progress`.
        provider_status: String,
        /// Requests in the provider batch.
        total: u64,
        /// Requests with a response so far.
        completed: u64,
        /// Requests with an error so far.
        failed: u64,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The provider finished the batch.
    MarkProviderCompleted {
        /// The output file, if any.
        output_file_id: Option<String>,
        /// The error file, if any.
        error_file_id: Option<String>,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Start downloading results.
    StartDownload {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Every request's result or error is recorded.
    MarkDownloaded {
        /// Requests with a response.
        succeeded: u64,
        /// Requests with an error.
        failed: u64,
        /// Now.
        at: DateTime<Utc>,
    },
    /// Start delivering results, or again after a redelivery.
    StartDelivery {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Every request is settled: the batch is done.
    FinishDelivery {
        /// Results delivered or consumed.
        delivered: u64,
        /// Results whose delivery failed, or whose owner reported them unusable.
        undelivered: u64,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The upload or the provider failed.
    Fail {
        /// The error.
        error: Value,
        /// Now.
        at: DateTime<Utc>,
    },
    /// The owner cancels the batch.
    Cancel {
        /// Now.
        at: DateTime<Utc>,
    },
    /// Record that the provider was asked to cancel (after the owner cancelled in flight).
    RecordProviderCancel {
        /// Now.
        at: DateTime<Utc>,
    },
    /// The provider's completion window ran out.
    Expire {
        /// Results of the requests that finished in time, if any.
        output_file_id: Option<String>,
        /// Errors of the requests that finished in time, if any.
        error_file_id: Option<String>,
        /// Now.
        at: DateTime<Utc>,
    },
}
