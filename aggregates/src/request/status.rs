//! A request's states and the one table of allowed transitions.

use serde::{Deserialize, Serialize};

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestStatus {
    /// Submitted; its batch is still building.
    Pending,
    /// Its batch was sent to the provider.
    ProviderProcessing,
    /// The provider's result arrived.
    ProviderProcessed,
    /// The result is being delivered (webhook or RabbitMQ).
    Delivering,
    /// The receiver accepted the result; may be redelivered on request.
    Delivered,
    /// The provider reported an error for it, or its batch failed.
    Failed,
    /// Delivery attempts are exhausted, or the receiver refused; may be redelivered.
    DeliveryFailed,
    /// The provider expired its batch before it was processed.
    Expired,
    /// Its owner cancelled it while its batch was building.
    Cancelled,
    /// Poll delivery: the owner fetched and acknowledged the result.
    Consumed,
    /// Poll delivery: the owner reported it could not use the result.
    ConsumeFailed,
}

impl RequestStatus {
    /// Every status.
    pub const ALL: [Self; 11] = [
        Self::Pending,
        Self::ProviderProcessing,
        Self::ProviderProcessed,
        Self::Delivering,
        Self::Delivered,
        Self::Failed,
        Self::DeliveryFailed,
        Self::Expired,
        Self::Cancelled,
        Self::Consumed,
        Self::ConsumeFailed,
    ];

    /// The transition table: true when a request may move from `self` to `to`.
    pub const fn can_transition_to(self, to: Self) -> bool {
        use RequestStatus::{
            Cancelled, ConsumeFailed, Consumed, Delivered, Delivering, DeliveryFailed, Expired,
            Failed, Pending, ProviderProcessed, ProviderProcessing,
        };
        matches!(
            (self, to),
            (Pending, ProviderProcessing)
                | (Pending, Failed)
                | (Pending, Expired)
                | (Pending, Cancelled)
                | (ProviderProcessing, ProviderProcessed)
                | (ProviderProcessing, Failed)
                | (ProviderProcessing, Expired)
                | (ProviderProcessed, Delivering)
                | (ProviderProcessed, Consumed)
                | (ProviderProcessed, ConsumeFailed)
                | (Delivering, Delivered)
                | (Delivering, DeliveryFailed)
                | (DeliveryFailed, Delivering)
                | (Delivered, Delivering)
        )
    }

    /// The wire form, e.g. `provider_processing`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::ProviderProcessing => "provider_processing",
            Self::ProviderProcessed => "provider_processed",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::DeliveryFailed => "delivery_failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Consumed => "consumed",
            Self::ConsumeFailed => "consume_failed",
        }
    }
}
