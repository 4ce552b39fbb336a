//! Upcasters by aggregate type: old event shapes are rewritten to the current one on every
//! load (postgres-es) and in the global log reader, so consumers only ever see current shapes.

use std::collections::HashMap;

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use cqrs_es::Aggregate;

use crate::Effects;

/// An aggregate whose older event versions can be brought up to date (and which says which
/// streams its events start, see [`Effects`]).
///
/// Write event versions as full semantic versions (`"2.0.0"`): that is the form cqrs-es's
/// `SemanticVersionEventUpcaster` stamps on the events it upcasts, so stored and upcast
/// events of one version read the same.
pub trait Upcast: Aggregate + Effects {
    /// The upcasters for this aggregate's events, applied in order (none by default).
    fn upcasters() -> Vec<Box<dyn EventUpcaster>> {
        Vec::new()
    }
}

/// Every registered aggregate's upcasters, keyed by aggregate type.
#[derive(Default)]
pub struct Upcasters {
    by_type: HashMap<&'static str, Vec<Box<dyn EventUpcaster>>>,
}

impl Upcasters {
    /// Adds `A`'s upcasters.
    #[must_use]
    pub fn register<A: Upcast>(mut self) -> Self {
        self.by_type.insert(A::TYPE, A::upcasters());
        self
    }

    /// Brings one stored event to its current version; unknown types pass through unchanged.
    pub fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        let Some(upcasters) = self.by_type.get(event.aggregate_type.as_str()) else {
            return event;
        };
        upcasters.iter().fold(event, |event, upcaster| {
            if upcaster.can_upcast(&event.event_type, &event.event_version) {
                upcaster.upcast(event)
            } else {
                event
            }
        })
    }
}
