//! One command's append: its events serialized for the `events` table, and the snapshot that
//! falls due with them. Built from the aggregate the command decided on, owned, so that the
//! group committer can write it without copying payloads.

use chronicle_aggregates::{StreamEvent, Upcast};
use chronicle_projections::{EventMetadata, LogCursor};
use cqrs_es::persist::{EventStoreAggregateContext, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::Value;

use super::kept::KeptState;

/// A snapshot written with an append.
pub(super) struct SnapshotUpdate {
    /// The aggregate's state after `last_sequence`.
    pub(super) payload: Value,
    /// The sequence of the last event the state includes.
    pub(super) last_sequence: i64,
    /// postgres-es's snapshot counter (one more than the loaded snapshot's).
    pub(super) counter: i64,
}

/// The events one command appends to one aggregate, the snapshot that falls due, and the
/// appends committed together with it, all or none (the events of other streams that its
/// events start or move).
pub struct Append {
    pub(super) aggregate_type: &'static str,
    pub(super) aggregate_id: String,
    pub(super) events: Vec<SerializedEvent>,
    pub(super) snapshot: Option<SnapshotUpdate>,
    pub(super) together: Vec<Append>,
}

/// Where each of an append's events landed, in sequence order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// (sequence, log position) of each event.
    pub events: Vec<(i64, LogCursor)>,
}

impl Appended {
    /// The last event's sequence and position; `None` for an empty append.
    pub fn last(&self) -> Option<(i64, LogCursor)> {
        self.events.last().copied()
    }
}

impl Append {
    /// The append of `events` to the aggregate of `decided`, stamped with `metadata`, with
    /// the first events of the streams they start and the events of `others`, all committed
    /// together. `decided` is the loaded context after the command decided: its aggregate has
    /// applied `events` (as deciding does), its sequence is still the loaded one. When the
    /// events reach a multiple of `snapshot_every` (0: never), that state is snapshotted.
    ///
    /// # Errors
    /// An event or the state does not serialize.
    pub fn new<A: Upcast>(
        decided: EventStoreAggregateContext<A>,
        events: &[A::Event],
        others: Vec<StreamEvent>,
        metadata: &EventMetadata,
        snapshot_every: usize,
    ) -> Result<Self, PersistenceError> {
        let metadata = metadata.to_value();
        let together = decided
            .aggregate
            .started_streams(&decided.aggregate_id, events)?
            .into_iter()
            .chain(others)
            .map(|event| Self::other(event, &metadata))
            .collect();
        let loaded = decided.current_sequence;
        let serialized = events
            .iter()
            .zip(loaded + 1..)
            .map(|(event, sequence)| {
                Ok(SerializedEvent::new(
                    decided.aggregate_id.clone(),
                    sequence,
                    A::TYPE.to_owned(),
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(event)?,
                    metadata.clone(),
                ))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        let snapshot = if snapshot_due(snapshot_every, loaded, events.len()) {
            Some(SnapshotUpdate {
                payload: serde_json::to_value(&decided.aggregate)?,
                last_sequence: to_i64(loaded + events.len()),
                counter: to_i64(decided.current_snapshot.map_or(1, |counter| counter + 1)),
            })
        } else {
            None
        };
        Ok(Self {
            aggregate_type: A::TYPE,
            aggregate_id: decided.aggregate_id,
            events: serialized,
            snapshot,
            together,
        })
    }

    /// The append of another stream's event.
    fn other(event: StreamEvent, metadata: &Value) -> Self {
        let serialized = SerializedEvent::new(
            event.aggregate_id,
            event.sequence,
            event.aggregate_type.to_owned(),
            event.event_type,
            event.event_version,
            event.payload,
            metadata.clone(),
        );
        Self::one(event.aggregate_type, serialized)
    }

    /// The append of `events` of other streams, without a deciding aggregate, all committed
    /// together (`None`: no events).
    pub fn others(events: Vec<StreamEvent>, metadata: &EventMetadata) -> Option<Self> {
        let metadata = metadata.to_value();
        let mut appends = events
            .into_iter()
            .map(|event| Self::other(event, &metadata));
        let mut first = appends.next()?;
        first.together = appends.collect();
        Some(first)
    }

    /// The append of one event, without a snapshot.
    fn one(aggregate_type: &'static str, event: SerializedEvent) -> Self {
        Self {
            aggregate_type,
            aggregate_id: event.aggregate_id.clone(),
            events: vec![event],
            snapshot: None,
            together: Vec::new(),
        }
    }

    /// The state it leaves its aggregate in, when its snapshot covers its last event.
    pub(super) fn state_after(&self) -> Option<KeptState> {
        let snapshot = self.snapshot.as_ref()?;
        let last = self.events.last().map(|e| to_i64(e.sequence))?;
        (snapshot.last_sequence == last).then(|| KeptState {
            payload: snapshot.payload.clone(),
            last_sequence: last,
            counter: snapshot.counter,
        })
    }

    /// This append, then the appends committed together with it.
    pub(super) fn unit(&self) -> impl Iterator<Item = &Self> {
        std::iter::once(self).chain(&self.together)
    }

    /// The append of already serialized `events` (cqrs-es's own commit path).
    pub(super) fn serialized<A: Aggregate>(
        events: &[SerializedEvent],
        snapshot: Option<(String, Value, usize)>,
        snapshot_every: usize,
    ) -> Self {
        let last = events.last().map_or(0, |e| e.sequence);
        let every = snapshot_every.max(1);
        let aggregate_id = events
            .first()
            .map(|e| e.aggregate_id.clone())
            .or_else(|| snapshot.as_ref().map(|(id, ..)| id.clone()))
            .unwrap_or_default();
        Self {
            aggregate_type: A::TYPE,
            aggregate_id,
            events: events.to_vec(),
            snapshot: snapshot.map(|(_, payload, counter)| SnapshotUpdate {
                payload,
                last_sequence: to_i64(last / every * every),
                counter: to_i64(counter),
            }),
            together: Vec::new(),
        }
    }
}

/// Whether `count` new events, appended after `current`, reach a multiple of `every`
/// (0: never): then a snapshot falls due.
fn snapshot_due(every: usize, current: usize, count: usize) -> bool {
    every > 0 && (current + count) / every > current / every
}

pub(super) fn to_i64(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::snapshot_due;

    #[test]
    fn a_snapshot_falls_due_when_the_events_reach_a_multiple_of_the_interval() {
        assert!(!snapshot_due(0, 99, 5), "never without an interval");
        assert!(!snapshot_due(100, 0, 99), "not reached");
        assert!(snapshot_due(100, 99, 1), "reached exactly");
        assert!(snapshot_due(100, 98, 5), "passed");
        assert!(snapshot_due(10, 5, 30), "several passed");
        assert!(!snapshot_due(10, 10, 9), "the next not yet reached");
    }
}
