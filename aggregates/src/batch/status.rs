//! A batch's states and the one table of allowed transitions.

use serde::{Deserialize, Serialize};

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Open: accepting requests.
    Building,
    /// Closed; its input file is being uploaded.
    Uploading,
    /// The input file is at the provider.
    Uploaded,
    /// The provider is running the batch.
    ProviderProcessing,
    /// The provider finished; results await download.
    ProviderCompleted,
    /// Results are being downloaded and matched to requests.
    Downloading,
    /// Every request has its result or error.
    ReadyToDeliver,
    /// Results are being delivered (pushed, or waiting for their owner to fetch them).
    Delivering,
    /// Every request is settled: delivered, consumed, failed, expired, cancelled, or its
    /// delivery failed. A redelivery takes it back to delivering.
    Done,
    /// The provider or the upload failed.
    Failed,
    /// Its owner cancelled it.
    Cancelled,
    /// The provider's completion window ran out.
    Expired,
}

impl BatchStatus {
    /// Every status.
    pub const ALL: [Self; 12] = [
        Self::Building,
        Self::Uploading,
        Self::Uploaded,
        Self::ProviderProcessing,
        Self::ProviderCompleted,
        Self::Downloading,
        Self::ReadyToDeliver,
        Self::Delivering,
        Self::Done,
        Self::Failed,
        Self::Cancelled,
        Self::Expired,
    ];

    /// The transition table: true when a batch may move from `self` to `to`.
    ///
    /// An expired batch is still downloaded: requests that got results before the window ran
    /// out are delivered, the others expire. A done batch delivers again when some of its results
    /// are redelivered.
    pub const fn can_transition_to(self, to: Self) -> bool {
        use BatchStatus::{
            Building, Cancelled, Delivering, Done, Downloading, Expired, Failed, ProviderCompleted,
            ProviderProcessing, ReadyToDeliver, Uploaded, Uploading,
        };
        matches!(
            (self, to),
            (Building, Uploading)
                | (Building, Cancelled)
                | (Uploading, Uploaded)
                | (Uploading, Failed)
                | (Uploading, Cancelled)
                | (Uploaded, ProviderProcessing)
                | (Uploaded, Failed)
                | (Uploaded, Cancelled)
                | (ProviderProcessing, ProviderCompleted)
                | (ProviderProcessing, Failed)
                | (ProviderProcessing, Cancelled)
                | (ProviderProcessing, Expired)
                | (ProviderCompleted, Downloading)
                | (Expired, Downloading)
                | (Downloading, ReadyToDeliver)
                | (Downloading, Failed)
                | (ReadyToDeliver, Delivering)
                | (Delivering, Done)
                | (Done, Delivering)
        )
    }

    /// The wire form, e.g. `provider_processing`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Building => "building",
            Self::Uploading => "uploading",
            Self::Uploaded => "uploaded",
            Self::ProviderProcessing => "provider_processing",
            Self::ProviderCompleted => "provider_completed",
            Self::Downloading => "downloading",
            Self::ReadyToDeliver => "ready_to_deliver",
            Self::Delivering => "delivering",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }
}
