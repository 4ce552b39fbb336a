//! What happened to a request. Event types and versions are a contract: never rename them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::{Cost, DeliveryAttempt, RequestSpec, RequestStatus};

/// A request's events; each moves it to the status [`RequestEvent::status`] names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RequestEvent {
    /// The request was accepted into a building batch.
    Submitted {
        /// The request's id.
        request_id: Uuid,
        /// The client that owns it.
        owner: String,
        /// The batch it joined.
        batch_id: Uuid,
        /// What to send and how to deliver the result.
        spec: RequestSpec,
        /// When it was accepted.
        at: DateTime<Utc>,
    },
    /// Its batch was sent to the provider.
    SentToProvider {
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider's response arrived.
    ResultRecorded {
        /// The provider's response body for this request.
        response: Value,
        /// What it cost, priced when recorded; absent when no price applied (and in events
        /// recorded before prices were kept).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cost: Option<Cost>,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider reported an error for it, or its batch failed.
    Failed {
        /// The provider's error.
        error: Value,
        /// When.
        at: DateTime<Utc>,
    },
    /// The provider expired its batch before processing it.
    Expired {
        /// When.
        at: DateTime<Utc>,
    },
    /// Its owner cancelled it.
    Cancelled {
        /// When.
        at: DateTime<Utc>,
    },
    /// Delivery of the result started (again, after a failed delivery).
    DeliveryStarted {
        /// When.
        at: DateTime<Utc>,
    },
    /// One delivery attempt; a `Delivered` or `DeliveryFailed` follows when it ended the round.
    DeliveryAttempted {
        /// The attempt.
        attempt: DeliveryAttempt,
        /// When the next attempt is due, if there is one.
        retry_at: Option<DateTime<Utc>>,
        /// When it was recorded.
        at: DateTime<Utc>,
    },
    /// The receiver accepted the result.
    Delivered {
        /// When.
        at: DateTime<Utc>,
    },
    /// Delivery attempts are exhausted.
    DeliveryFailed {
        /// Why the last attempt failed.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// Poll delivery: the owner acknowledged the result.
    Consumed {
        /// When.
        at: DateTime<Utc>,
    },
    /// Poll delivery: the owner could not use the result.
    ConsumeFailed {
        /// What the owner reported.
        reason: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl RequestEvent {
    /// The status the request is in after this event.
    pub const fn status(&self) -> RequestStatus {
        match self {
            Self::Submitted { .. } => RequestStatus::Pending,
            Self::SentToProvider { .. } => RequestStatus::ProviderProcessing,
            Self::ResultRecorded { .. } => RequestStatus::ProviderProcessed,
            Self::Failed { .. } => RequestStatus::Failed,
            Self::Expired { .. } => RequestStatus::Expired,
            Self::Cancelled { .. } => RequestStatus::Cancelled,
            Self::DeliveryStarted { .. } | Self::DeliveryAttempted { .. } => {
                RequestStatus::Delivering
            }
            Self::Delivered { .. } => RequestStatus::Delivered,
            Self::DeliveryFailed { .. } => RequestStatus::DeliveryFailed,
            Self::Consumed { .. } => RequestStatus::Consumed,
            Self::ConsumeFailed { .. } => RequestStatus::ConsumeFailed,
        }
    }

    /// When it happened.
    pub const fn at(&self) -> DateTime<Utc> {
        match self {
            Self::Submitted { at, .. }
            | Self::SentToProvider { at }
            | Self::ResultRecorded { at, .. }
            | Self::Failed { at, .. }
            | Self::Expired { at }
            | Self::Cancelled { at }
            | Self::DeliveryStarted { at }
            | Self::DeliveryAttempted { at, .. }
            | Self::Delivered { at }
            | Self::DeliveryFailed { at, .. }
            | Self::Consumed { at }
            | Self::ConsumeFailed { at, .. } => *at,
        }
    }
}

impl RequestEvent {
    /// The status after an event of this type, for readers that see only the stored type.
    pub fn status_after_type(event_type: &str) -> Option<RequestStatus> {
        Some(match event_type {
            "RequestSubmitted" => RequestStatus::Pending,
            "RequestSentToProvider" => RequestStatus::ProviderProcessing,
            "RequestResultRecorded" => RequestStatus::ProviderProcessed,
            "RequestFailed" => RequestStatus::Failed,
            "RequestExpired" => RequestStatus::Expired,
            "RequestCancelled" => RequestStatus::Cancelled,
            "RequestDeliveryStarted" | "RequestDeliveryAttempted" => RequestStatus::Delivering,
            "RequestDelivered" => RequestStatus::Delivered,
            "RequestDeliveryFailed" => RequestStatus::DeliveryFailed,
            "RequestConsumed" => RequestStatus::Consumed,
            "RequestConsumeFailed" => RequestStatus::ConsumeFailed,
            _ => return None,
        })
    }
}

impl DomainEvent for RequestEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Submitted { .. } => "RequestSubmitted",
            Self::SentToProvider { .. } => "RequestSentToProvider",
            Self::ResultRecorded { .. } => "RequestResultRecorded",
            Self::Failed { .. } => "RequestFailed",
            Self::Expired { .. } => "RequestExpired",
            Self::Cancelled { .. } => "RequestCancelled",
            Self::DeliveryStarted { .. } => "RequestDeliveryStarted",
            Self::DeliveryAttempted { .. } => "RequestDeliveryAttempted",
            Self::Delivered { .. } => "RequestDelivered",
            Self::DeliveryFailed { .. } => "RequestDeliveryFailed",
            Self::Consumed { .. } => "RequestConsumed",
            Self::ConsumeFailed { .. } => "RequestConsumeFailed",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0.0".to_owned()
    }
}
