//! An event as stored and read back from the global log, with its metadata.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{LogCursor, ProjectionError};

/// Who and what caused an event; written on every event by the command path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EventMetadata {
    /// The client id that sent the command, or `system` for workers.
    pub actor: String,
    /// Shared by everything one client call set in motion.
    pub correlation_id: String,
    /// The event that triggered the command, if a process manager sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// The command that produced the event; derived from the idempotency key when one is given.
    pub command_id: String,
}

impl EventMetadata {
    /// The flat map postgres-es stores as the `metadata` column.
    pub fn to_map(&self) -> HashMap<String, String> {
        let mut map = HashMap::from([
            ("actor".to_owned(), self.actor.clone()),
            ("correlation_id".to_owned(), self.correlation_id.clone()),
            ("command_id".to_owned(), self.command_id.clone()),
        ]);
        if let Some(causation_id) = &self.causation_id {
            map.insert("causation_id".to_owned(), causation_id.clone());
        }
        map
    }

    /// The `metadata` column's JSON.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self.to_map()).unwrap_or_default()
    }

    /// Reads stored metadata leniently: fields a writer did not set come back empty.
    pub fn from_value(value: &Value) -> Self {
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        Self {
            actor: field("actor").unwrap_or_default(),
            correlation_id: field("correlation_id").unwrap_or_default(),
            causation_id: field("causation_id"),
            command_id: field("command_id").unwrap_or_default(),
        }
    }
}

/// One committed event, upcast to its current version, with its place in the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Its place in the global log.
    pub cursor: LogCursor,
    /// The aggregate's type, e.g. `Batch`.
    pub aggregate_type: String,
    /// The aggregate's id.
    pub aggregate_id: String,
    /// 1-based, gap-free within the aggregate.
    pub sequence: i64,
    /// The event's name, e.g. `BatchSealed`.
    pub event_type: String,
    /// The payload's version after upcasting.
    pub event_version: String,
    /// The event's body.
    pub payload: Value,
    /// Actor, correlation, causation and command ids.
    pub metadata: EventMetadata,
    /// When the event was appended.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The payload as the aggregate's event type.
    ///
    /// # Errors
    /// `Malformed` when the payload does not have the shape of `E`.
    pub fn decode<E: DeserializeOwned>(&self) -> Result<E, ProjectionError> {
        E::deserialize(&self.payload).map_err(|error| ProjectionError::Malformed {
            position: self.cursor.position,
            event_type: self.event_type.clone(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::EventMetadata;

    #[test]
    fn metadata_round_trips_through_the_stored_map() {
        let metadata = EventMetadata {
            actor: "client-1".into(),
            correlation_id: "corr".into(),
            causation_id: Some("cause".into()),
            command_id: "cmd".into(),
        };
        let stored = serde_json::to_value(metadata.to_map()).unwrap_or_default();
        assert_eq!(EventMetadata::from_value(&stored), metadata);
    }
}
