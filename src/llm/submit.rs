//! Submitting requests: find the open batch of each (owner, endpoint, model) and add to it,
//! closing full batches and moving on to their successors.
//!
//! Correctness rests on the batch aggregate, not on this code: adds to one batch serialize on
//! its version (a concurrent writer makes ours retry), a closed batch refuses adds, and every
//! batch's successor id is derived from its own id, so concurrent submitters that find a
//! batch closed all move to the same next batch. `batch_heads` only shortens the walk.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chronicle_aggregates::batch::{
    Batch, BatchCommand, BatchEntry, BatchError, BatchKey, BatchLimits, BatchStatus, CloseReason,
};
use chronicle_aggregates::request::RequestSpec;
use chronicle_aggregates::{Endpoint, ErrorCode};
use chronicle_projections::LogCursor;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use super::custom_ids::{taken, CUSTOM_IDS_UNIQUE};
use super::open_batches::OpenBatches;
use super::Providers;
use crate::command::{CommandContext, CommandError, Commands, IdempotencyKey, Loaded, Refusal};

/// Requests appended per batch event: bounds event size and transaction length in bulk.
const CHUNK_REQUESTS: usize = 1000;
const CHUNK_BYTES: u64 = 8_000_000;
/// Concurrent adds to one batch retry on conflict at most this often.
const MAX_CONFLICTS: u32 = 200;
/// Batch ids are derived (uuid v5) so that every submitter computes the same ones.
const BATCH_NAMESPACE: Uuid = Uuid::from_u128(0x6368_726f_6e69_636c_6500_0000_0000_0002);

/// A request accepted into a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// The new request's id.
    pub request_id: Uuid,
    /// The batch it joined.
    pub batch_id: Uuid,
    /// The client's custom id.
    pub custom_id: String,
    /// Where the append that added it sits in the global log (`None` for a request an
    /// earlier keyed call accepted): the position a read of this write waits for.
    pub cursor: Option<LogCursor>,
}

/// The id of the batch `head` holds (the one it was loaded as, even before it opened).
fn batch_id_of(head: &Loaded<Batch>) -> Result<Uuid, CommandError> {
    head.aggregate_id().parse().map_err(|_| {
        CommandError::Internal(format!("batch id `{}` is not a uuid", head.aggregate_id()))
    })
}

fn duplicates(ids: &[String]) -> CommandError {
    CommandError::Rejected {
        code: ErrorCode::Validation,
        message: format!("custom ids already used in their batch: {}", ids.join(", ")),
    }
}

/// Adds requests to batches.
#[derive(Clone)]
pub struct Submitter {
    commands: Commands,
    pool: PgPool,
    limits: BatchLimits,
    providers: Providers,
    open: OpenBatches,
}

impl Submitter {
    /// A submitter that closes batches at `limits` and accepts requests for the endpoints
    /// `providers` serve (any endpoint while no provider is configured: requests then wait
    /// for one).
    pub fn new(
        commands: Commands,
        pool: PgPool,
        limits: BatchLimits,
        providers: Providers,
    ) -> Self {
        Self {
            commands,
            pool,
            limits,
            providers,
            open: OpenBatches::default(),
        }
    }

    /// Accepts validated requests of `owner` into their batches, in order; with a key, a
    /// repeat returns the first outcome (see [`Commands::once`]).
    ///
    /// # Errors
    /// `NOT_SERVED` for an endpoint no configured provider serves, `VALIDATION` for custom
    /// ids already used (both checked before anything is written) or a request too large for
    /// a batch; a reused key; any command failure.
    pub async fn submit(
        &self,
        context: &CommandContext,
        owner: &str,
        specs: Vec<RequestSpec>,
        key: Option<IdempotencyKey>,
    ) -> Result<Vec<Accepted>, CommandError> {
        self.served(&specs)?;
        self.commands
            .once(context, key, |seed| {
                self.accept(context, owner, specs, seed)
            })
            .await
    }

    /// Refuses the whole call when a request's endpoint has no configured provider, while
    /// some provider is configured.
    fn served(&self, specs: &[RequestSpec]) -> Result<(), CommandError> {
        if !self.providers.any() {
            return Ok(());
        }
        let mut unserved: Vec<&str> = specs
            .iter()
            .map(|spec| spec.endpoint)
            .filter(|endpoint| self.providers.for_endpoint(*endpoint).is_none())
            .map(Endpoint::path)
            .collect();
        if unserved.is_empty() {
            return Ok(());
        }
        unserved.sort_unstable();
        unserved.dedup();
        Err(CommandError::Rejected {
            code: ErrorCode::NotServed,
            message: format!(
                "no provider is configured for {}; this deployment serves {}",
                unserved.join(", "),
                self.providers.endpoints().join(", ")
            ),
        })
    }

    /// With a `seed` (a keyed submission), request ids derive from it, so that a repeat
    /// after a partial failure finds the requests the first run accepted and adds only the
    /// rest; without one they are fresh (uuid v7).
    async fn accept(
        &self,
        context: &CommandContext,
        owner: &str,
        specs: Vec<RequestSpec>,
        seed: Option<Uuid>,
    ) -> Result<Vec<Accepted>, CommandError> {
        let count = specs.len();
        let ids: Vec<Uuid> = (0..count)
            .map(|index| match seed {
                Some(seed) => Uuid::new_v5(&seed, &(index as u64).to_le_bytes()),
                None => Uuid::now_v7(),
            })
            .collect();
        // Fresh ids cannot be taken yet: only a keyed repeat looks them up.
        let earlier = match seed {
            Some(_) => self.already_accepted(&ids).await?,
            None => HashMap::new(),
        };
        let mut accepted: Vec<Option<Accepted>> = vec![None; count];
        let mut groups: BTreeMap<(Endpoint, String), Vec<(usize, BatchEntry)>> = BTreeMap::new();
        for ((index, spec), request_id) in specs.into_iter().enumerate().zip(ids) {
            if let Some(batch_id) = earlier.get(&request_id) {
                accepted[index] = Some(Accepted {
                    request_id,
                    batch_id: *batch_id,
                    custom_id: spec.custom_id,
                    cursor: None,
                });
                continue;
            }
            let entry = BatchEntry { request_id, spec };
            groups
                .entry((entry.spec.endpoint, entry.spec.model.clone()))
                .or_default()
                .push((index, entry));
        }
        // One request makes one append, which the batch's unique index checks as it writes.
        let checked_by_the_append = count == 1;
        let mut keyed = Vec::with_capacity(groups.len());
        for ((endpoint, model), entries) in groups {
            let key = BatchKey {
                owner: owner.to_owned(),
                endpoint,
                model,
            };
            let head = self.open_batch(&key).await?;
            if !checked_by_the_append {
                self.check_custom_ids(batch_id_of(&head)?, &entries).await?;
            }
            keyed.push((key, head, entries));
        }
        for (key, head, entries) in keyed {
            let (client, model) = (key.owner.clone(), key.model.clone());
            let added = self.add_all(context, key, head, entries).await?;
            crate::metrics::requests_submitted(&client, &model, added.len());
            for (index, done) in added {
                accepted[index] = Some(done);
            }
        }
        Ok(accepted.into_iter().flatten().collect())
    }

    /// The batches that already hold any of `ids`.
    async fn already_accepted(&self, ids: &[Uuid]) -> Result<HashMap<Uuid, Uuid>, CommandError> {
        let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT request_id, batch_id FROM batch_custom_ids WHERE request_id = ANY($1)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The batch of `key` that is open now (or would open with the next add): start at the
    /// newest known batch and follow successors past closed ones.
    async fn open_batch(&self, key: &BatchKey) -> Result<Loaded<Batch>, CommandError> {
        let head = match self.open.get(key) {
            Some(hint) => Some(hint),
            None => sqlx::query_scalar(
                "SELECT batch_id FROM batch_heads WHERE owner = $1 AND endpoint = $2 AND model = $3",
            )
            .bind(&key.owner)
            .bind(key.endpoint.path())
            .bind(&key.model)
            .fetch_optional(&self.pool)
            .await?,
        };
        let mut batch_id = head.unwrap_or_else(|| first_batch_id(key));
        loop {
            let batch = self.commands.loaded::<Batch>(&batch_id.to_string()).await?;
            match batch.aggregate().status() {
                None | Some(BatchStatus::Building) => {
                    self.open.remember(key, batch_id);
                    return Ok(batch);
                }
                Some(_) => batch_id = next_batch_id(batch_id),
            }
        }
    }

    /// All-or-nothing for the common case: refuse before writing when custom ids repeat in
    /// the call or are already in the batch the requests would join. (The append's unique
    /// index checks again on every add, so a racing submitter still cannot create one.)
    async fn check_custom_ids(
        &self,
        head: Uuid,
        entries: &[(usize, BatchEntry)],
    ) -> Result<(), CommandError> {
        let mut ids: Vec<String> = entries
            .iter()
            .map(|(_, e)| e.spec.custom_id.clone())
            .collect();
        ids.sort();
        let mut repeated: Vec<String> = ids
            .windows(2)
            .filter(|pair| pair[0] == pair[1])
            .map(|pair| pair[0].clone())
            .collect();
        repeated.extend(taken(&self.pool, head, &ids).await?);
        repeated.sort();
        repeated.dedup();
        if repeated.is_empty() {
            Ok(())
        } else {
            Err(duplicates(&repeated))
        }
    }

    async fn add_all(
        &self,
        context: &CommandContext,
        key: BatchKey,
        head: Loaded<Batch>,
        entries: Vec<(usize, BatchEntry)>,
    ) -> Result<Vec<(usize, Accepted)>, CommandError> {
        let mut batch_id = batch_id_of(&head)?;
        // The first add decides on the batch as `open_batch` loaded it.
        let mut head = Some(head);
        let mut accepted = Vec::with_capacity(entries.len());
        let mut rest = entries.as_slice();
        // Set when the current batch has room for only this many more: add them, then close.
        let mut room: Option<usize> = None;
        let mut conflicts = 0;
        while !rest.is_empty() {
            let chunk = &rest[..chunk_len(rest).min(room.unwrap_or(usize::MAX))];
            let command = BatchCommand::Add {
                batch_id,
                key: key.clone(),
                entries: chunk.iter().map(|(_, e)| e.clone()).collect(),
                limits: self.limits,
                at: Utc::now(),
            };
            let id = batch_id.to_string();
            let added = match head.take() {
                Some(head) => {
                    self.commands
                        .attempt_on::<Batch>(context, head, command, &())
                        .await
                }
                None => {
                    self.commands
                        .attempt::<Batch>(context, &id, command, &())
                        .await
                }
            };
            match added {
                Ok(receipt) => {
                    accepted.extend(chunk.iter().map(|(index, entry)| {
                        let done = Accepted {
                            request_id: entry.request_id,
                            batch_id,
                            custom_id: entry.spec.custom_id.clone(),
                            cursor: receipt.cursor,
                        };
                        (*index, done)
                    }));
                    rest = &rest[chunk.len()..];
                    if room.take().is_some() {
                        self.close_full(context, batch_id, rest).await?;
                        batch_id = next_batch_id(batch_id);
                    }
                }
                Err(Refusal::Rejected(BatchError::WouldOverflow { requests, bytes })) => {
                    match fitting(chunk, requests, bytes) {
                        0 => {
                            self.close_full(context, batch_id, chunk).await?;
                            batch_id = next_batch_id(batch_id);
                            room = None;
                        }
                        fits => room = Some(fits),
                    }
                }
                Err(Refusal::Rejected(BatchError::NotBuilding { .. })) => {
                    batch_id = next_batch_id(batch_id);
                    room = None;
                }
                Err(Refusal::Rejected(BatchError::DuplicateCustomIds { ids })) => {
                    return Err(duplicates(&ids));
                }
                Err(Refusal::Failed(CommandError::Duplicate(rule)))
                    if rule == CUSTOM_IDS_UNIQUE =>
                {
                    return Err(self.already_in(batch_id, chunk).await);
                }
                Err(Refusal::Failed(CommandError::Conflict)) if conflicts < MAX_CONFLICTS => {
                    conflicts += 1;
                    tokio::time::sleep(Duration::from_millis(u64::from(conflicts % 8))).await;
                }
                Err(refusal) => return Err(refusal.into()),
            }
        }
        Ok(accepted)
    }

    /// The refusal of `chunk`, whose append the batch's custom-id index refused: the ids it
    /// already holds.
    async fn already_in(&self, batch_id: Uuid, chunk: &[(usize, BatchEntry)]) -> CommandError {
        let ids: Vec<String> = chunk
            .iter()
            .map(|(_, e)| e.spec.custom_id.clone())
            .collect();
        match taken(&self.pool, batch_id, &ids).await {
            Ok(mut found) => {
                found.sort();
                duplicates(&found)
            }
            Err(error) => error.into(),
        }
    }

    /// Closes a full batch; someone else closing it first is just as good.
    async fn close_full(
        &self,
        context: &CommandContext,
        batch_id: Uuid,
        chunk: &[(usize, BatchEntry)],
    ) -> Result<(), CommandError> {
        let id = batch_id.to_string();
        for attempt in 0..MAX_CONFLICTS {
            let command = BatchCommand::Close {
                reason: CloseReason::Full,
                successor: next_batch_id(batch_id),
                at: Utc::now(),
            };
            match self
                .commands
                .attempt::<Batch>(context, &id, command, &())
                .await
            {
                Ok(_) | Err(Refusal::Rejected(BatchError::InvalidTransition { .. })) => {
                    return Ok(())
                }
                Err(Refusal::Rejected(BatchError::Empty)) => {
                    let custom_id = chunk
                        .first()
                        .map(|(_, e)| e.spec.custom_id.clone())
                        .unwrap_or_default();
                    return Err(CommandError::Rejected {
                        code: ErrorCode::Validation,
                        message: format!("request `{custom_id}` is larger than a batch may hold"),
                    });
                }
                Err(Refusal::Failed(CommandError::Conflict)) => {
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt % 8))).await;
                }
                Err(refusal) => return Err(refusal.into()),
            }
        }
        Err(CommandError::Conflict)
    }
}

/// How many entries to append in one event.
fn chunk_len(entries: &[(usize, BatchEntry)]) -> usize {
    let mut bytes = 0;
    let mut len = 0;
    for (_, entry) in entries.iter().take(CHUNK_REQUESTS) {
        bytes += entry.spec.jsonl_bytes();
        if len > 0 && bytes > CHUNK_BYTES {
            break;
        }
        len += 1;
    }
    len
}

/// How many leading entries fit in `requests` more requests and `bytes` more bytes.
fn fitting(entries: &[(usize, BatchEntry)], requests: u64, bytes: u64) -> usize {
    let mut used = 0;
    entries
        .iter()
        .take(usize::try_from(requests).unwrap_or(usize::MAX))
        .take_while(|(_, entry)| {
            used += entry.spec.jsonl_bytes();
            used <= bytes
        })
        .count()
}

/// The first batch of a key.
fn first_batch_id(key: &BatchKey) -> Uuid {
    let name = format!("{}\n{}\n{}", key.owner, key.endpoint.path(), key.model);
    Uuid::new_v5(&BATCH_NAMESPACE, name.as_bytes())
}

/// The batch that follows `batch_id` for the same key.
pub(super) fn next_batch_id(batch_id: Uuid) -> Uuid {
    Uuid::new_v5(&batch_id, b"next")
}
