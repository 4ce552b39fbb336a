//! A batch: the requests of one (owner, endpoint, model) that travel to the provider together.
//!
//! A batch opens with its first requests and keeps `building` until it is full (50,000
//! requests or 190 MB of input), its oldest request waited long enough, it is an hour old, or
//! its owner flushes it. Closing names its successor, so every submitter finds the next open
//! batch the same way. Then the provider driver takes it through upload, processing and
//! download, and delivery ends it (`done` once every request is settled). [`BatchStatus::can_transition_to`] is the table.
//!
//! The batch stream records submissions (`RequestsAdded` carries each request's body), so
//! accepting requests is one append. Its state stays small — counts and sizes, never the
//! requests — so loading a 50,000-request batch from a snapshot costs the same as an empty
//! one. The batch refuses custom ids repeated within one add; across adds, uniqueness is a
//! unique index the append itself writes (`batch_custom_ids`), so a second use of an id fails
//! the append whatever the order of concurrent writers, without a lookup before each add.

mod command;
mod error;
mod event;
mod status;
#[cfg(test)]
mod tests;
mod values;

use std::collections::{BTreeSet, HashSet};

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use command::BatchCommand;
pub use error::BatchError;
pub use event::BatchEvent;
pub use status::BatchStatus;
pub use values::{BatchEntry, BatchKey, BatchLimits, CloseReason};

use crate::request::{Request, RequestEvent};
use crate::{Effects, Settlement, StreamEvent, Upcast};

/// A batch's state, rebuilt from its events.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    id: Option<Uuid>,
    key: Option<BatchKey>,
    status: Option<BatchStatus>,
    request_count: u64,
    size_bytes: u64,
    opened_at: Option<DateTime<Utc>>,
    successor: Option<Uuid>,
    provider: ProviderFacts,
    updated_at: Option<DateTime<Utc>>,
    /// Requests withdrawn so far (few: only while building), so none is withdrawn twice.
    #[serde(default)]
    withdrawn: BTreeSet<Uuid>,
}

/// What the provider told us about a batch so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderFacts {
    /// The uploaded input file.
    pub input_file_id: Option<String>,
    /// The provider's batch id.
    pub batch_id: Option<String>,
    /// The last recorded provider status and (total, completed, failed) counts.
    pub progress: Option<(String, u64, u64, u64)>,
    /// The results file.
    pub output_file_id: Option<String>,
    /// The errors file.
    pub error_file_id: Option<String>,
    /// The provider was asked to cancel the batch.
    pub cancel_requested: bool,
}

impl Batch {
    /// The status, `None` before it opened.
    pub fn status(&self) -> Option<BatchStatus> {
        self.status
    }

    /// Whose requests, for which endpoint and model; `None` before it opened.
    pub fn key(&self) -> Option<&BatchKey> {
        self.key.as_ref()
    }

    /// Requests in the batch.
    pub fn request_count(&self) -> u64 {
        self.request_count
    }

    /// Bytes of the input file the batch will upload.
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// The next batch for the same key, once this one closed.
    pub fn successor(&self) -> Option<Uuid> {
        self.successor
    }

    /// When it opened.
    pub fn opened_at(&self) -> Option<DateTime<Utc>> {
        self.opened_at
    }

    /// What the provider told us about it.
    pub fn provider(&self) -> &ProviderFacts {
        &self.provider
    }

    fn add(
        &self,
        batch_id: Uuid,
        key: BatchKey,
        entries: Vec<BatchEntry>,
        limits: BatchLimits,
        at: DateTime<Utc>,
    ) -> Result<Vec<BatchEvent>, BatchError> {
        if entries.is_empty() {
            return Err(BatchError::NoEntries);
        }
        let mut events = Vec::with_capacity(2);
        match (self.status, &self.key) {
            (None, _) => events.push(BatchEvent::Opened { batch_id, key, at }),
            (Some(_), Some(existing)) if *existing != key => return Err(BatchError::KeyMismatch),
            (Some(BatchStatus::Building), _) => {}
            (Some(status), _) => return Err(BatchError::NotBuilding { status }),
        }
        let mut seen = HashSet::with_capacity(entries.len());
        let mut repeated: Vec<String> = entries
            .iter()
            .filter(|entry| !seen.insert(entry.spec.custom_id.as_str()))
            .map(|entry| entry.spec.custom_id.clone())
            .collect();
        if !repeated.is_empty() {
            repeated.sort();
            repeated.dedup();
            return Err(BatchError::DuplicateCustomIds { ids: repeated });
        }
        let count = entries.len() as u64;
        let bytes: u64 = entries.iter().map(|e| e.spec.jsonl_bytes()).sum();
        let room_requests = limits.max_requests.saturating_sub(self.request_count);
        let room_bytes = limits.max_bytes.saturating_sub(self.size_bytes);
        if count > room_requests || bytes > room_bytes {
            return Err(BatchError::WouldOverflow {
                requests: room_requests,
                bytes: room_bytes,
            });
        }
        events.push(BatchEvent::RequestsAdded {
            entries,
            size_bytes: bytes,
            at,
        });
        Ok(events)
    }

    /// Checks a lifecycle event against the transition table.
    fn transition(&self, event: BatchEvent) -> Result<Vec<BatchEvent>, BatchError> {
        let from = self.status.ok_or(BatchError::NotFound)?;
        let to = event.status();
        if !from.can_transition_to(to) {
            return Err(BatchError::InvalidTransition { from, to });
        }
        if matches!(event, BatchEvent::Closed { .. }) && self.request_count == 0 {
            return Err(BatchError::Empty);
        }
        Ok(vec![event])
    }
}

impl Aggregate for Batch {
    const TYPE: &'static str = "Batch";
    type Command = BatchCommand;
    type Event = BatchEvent;
    type Error = BatchError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let events = match command {
            BatchCommand::Add {
                batch_id,
                key,
                entries,
                limits,
                at,
            } => self.add(batch_id, key, entries, limits, at)?,
            BatchCommand::WithdrawRequest { request_id, at } => match self.status {
                Some(BatchStatus::Building) if self.withdrawn.contains(&request_id) => {
                    return Err(BatchError::AlreadyWithdrawn);
                }
                Some(BatchStatus::Building) => {
                    vec![BatchEvent::RequestWithdrawn { request_id, at }]
                }
                Some(status) => return Err(BatchError::NotBuilding { status }),
                None => return Err(BatchError::NotFound),
            },
            BatchCommand::Close {
                reason,
                successor,
                at,
            } => self.transition(BatchEvent::Closed {
                reason,
                successor,
                at,
            })?,
            BatchCommand::MarkUploaded { input_file_id, at } => {
                self.transition(BatchEvent::InputUploaded { input_file_id, at })?
            }
            BatchCommand::MarkSubmitted {
                provider_batch_id,
                at,
            } => self.transition(BatchEvent::SubmittedToProvider {
                provider_batch_id,
                at,
            })?,
            BatchCommand::RecordProviderProgress {
                provider_status,
                total,
                completed,
                failed,
                at,
            } => match self.status {
                Some(BatchStatus::ProviderProcessing) => vec![BatchEvent::ProviderProgressed {
                    provider_status,
                    total,
                    completed,
                    failed,
                    at,
                }],
                Some(status) => return Err(BatchError::NotAtProvider { status }),
                None => return Err(BatchError::NotFound),
            },
            BatchCommand::MarkProviderCompleted {
                output_file_id,
                error_file_id,
                at,
            } => self.transition(BatchEvent::ProviderCompleted {
                output_file_id,
                error_file_id,
                at,
            })?,
            BatchCommand::StartDownload { at } => {
                self.transition(BatchEvent::DownloadStarted { at })?
            }
            BatchCommand::MarkDownloaded {
                succeeded,
                failed,
                at,
            } => self.transition(BatchEvent::ResultsDownloaded {
                succeeded,
                failed,
                at,
            })?,
            BatchCommand::StartDelivery { at } => {
                self.transition(BatchEvent::DeliveryStarted { at })?
            }
            BatchCommand::FinishDelivery {
                delivered,
                undelivered,
                at,
            } => self.transition(BatchEvent::DeliveryFinished {
                delivered,
                undelivered,
                at,
            })?,
            BatchCommand::Fail { error, at } => {
                self.transition(BatchEvent::Failed { error, at })?
            }
            BatchCommand::Cancel { at } => self.transition(BatchEvent::Cancelled { at })?,
            BatchCommand::RecordProviderCancel { at } => {
                let at_provider = self.provider.batch_id.is_some();
                match self.status {
                    Some(BatchStatus::Cancelled)
                        if at_provider && !self.provider.cancel_requested =>
                    {
                        vec![BatchEvent::ProviderCancelRequested { at }]
                    }
                    _ => return Err(BatchError::NoProviderCancel),
                }
            }
            BatchCommand::Expire {
                output_file_id,
                error_file_id,
                at,
            } => self.transition(BatchEvent::Expired {
                output_file_id,
                error_file_id,
                at,
            })?,
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.status = Some(event.status());
        self.updated_at = Some(event.at());
        match event {
            BatchEvent::Opened { batch_id, key, at } => {
                self.id = Some(batch_id);
                self.key = Some(key);
                self.opened_at = Some(at);
            }
            BatchEvent::RequestsAdded {
                entries,
                size_bytes,
                ..
            } => {
                self.request_count += entries.len() as u64;
                self.size_bytes += size_bytes;
            }
            BatchEvent::Closed { successor, .. } => self.successor = Some(successor),
            // A withdrawn request still counts toward the limits: the batch was sized with it.
            BatchEvent::RequestWithdrawn { request_id, .. } => {
                self.withdrawn.insert(request_id);
            }
            BatchEvent::InputUploaded { input_file_id, .. } => {
                self.provider.input_file_id = Some(input_file_id);
            }
            BatchEvent::SubmittedToProvider {
                provider_batch_id, ..
            } => self.provider.batch_id = Some(provider_batch_id),
            BatchEvent::ProviderProgressed {
                provider_status,
                total,
                completed,
                failed,
                ..
            } => self.provider.progress = Some((provider_status, total, completed, failed)),
            BatchEvent::ProviderCompleted {
                output_file_id,
                error_file_id,
                ..
            }
            | BatchEvent::Expired {
                output_file_id,
                error_file_id,
                ..
            } => {
                self.provider.output_file_id = output_file_id;
                self.provider.error_file_id = error_file_id;
            }
            BatchEvent::DownloadStarted { .. }
            | BatchEvent::ResultsDownloaded { .. }
            | BatchEvent::DeliveryStarted { .. }
            | BatchEvent::DeliveryFinished { .. }
            | BatchEvent::Failed { .. }
            | BatchEvent::Cancelled { .. } => {}
            BatchEvent::ProviderCancelRequested { .. } => self.provider.cancel_requested = true,
        }
    }
}

impl Upcast for Batch {}

impl Effects for Batch {
    /// A submission (`RequestsAdded`) starts the stream of every request it accepted.
    fn started_streams(
        &self,
        aggregate_id: &str,
        events: &[BatchEvent],
    ) -> Result<Vec<StreamEvent>, serde_json::Error> {
        let (Some(key), Ok(batch_id)) = (&self.key, aggregate_id.parse::<Uuid>()) else {
            return Ok(Vec::new());
        };
        let mut started = Vec::new();
        for event in events {
            let BatchEvent::RequestsAdded { entries, at, .. } = event else {
                continue;
            };
            for entry in entries {
                let submitted = RequestEvent::Submitted {
                    request_id: entry.request_id,
                    owner: key.owner.clone(),
                    batch_id,
                    spec: entry.spec.clone(),
                    at: *at,
                };
                started.push(StreamEvent::new::<Request>(
                    entry.request_id.to_string(),
                    1,
                    &submitted,
                )?);
            }
        }
        Ok(started)
    }

    /// A cancellation or failure settles the batch's waiting requests; a withdrawal, the
    /// withdrawn one.
    fn settlements(&self, events: &[BatchEvent]) -> Vec<Settlement> {
        let Some(batch_id) = self.id else {
            return Vec::new();
        };
        events
            .iter()
            .filter_map(|event| match event {
                BatchEvent::Cancelled { at } => {
                    Some(Settlement::BatchCancelled { batch_id, at: *at })
                }
                BatchEvent::Failed { error, at } => Some(Settlement::BatchFailed {
                    batch_id,
                    error: error.clone(),
                    at: *at,
                }),
                BatchEvent::RequestWithdrawn { request_id, at } => Some(Settlement::Withdrawn {
                    request_id: *request_id,
                    at: *at,
                }),
                BatchEvent::Opened { .. }
                | BatchEvent::RequestsAdded { .. }
                | BatchEvent::Closed { .. }
                | BatchEvent::InputUploaded { .. }
                | BatchEvent::SubmittedToProvider { .. }
                | BatchEvent::ProviderProgressed { .. }
                | BatchEvent::ProviderCompleted { .. }
                | BatchEvent::DownloadStarted { .. }
                | BatchEvent::ResultsDownloaded { .. }
                | BatchEvent::DeliveryStarted { .. }
                | BatchEvent::DeliveryFinished { .. }
                | BatchEvent::ProviderCancelRequested { .. }
                | BatchEvent::Expired { .. } => None,
            })
            .collect()
    }
}
