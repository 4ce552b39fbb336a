//! The driver's file work: building a batch's input file and applying its results files.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use chronicle_aggregates::batch::{Batch, BatchCommand, BatchEvent};
use chronicle_aggregates::request::{Cost, RequestEvent, Spent, TokenUsage};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{DriverError, ProviderDriver};
use crate::llm::Prices;

use crate::provider::{Provider, ProviderError, ResultLine};
use chronicle_projections::request_moves;

/// Results applied per transaction while downloading.
const RESULTS_CHUNK: usize = 1000;

impl ProviderDriver {
    /// Downloads the results and errors, records each request's outcome, expires the rest.
    pub(super) async fn download(
        &self,
        provider: &dyn Provider,
        batch_id: Uuid,
        batch: &Batch,
    ) -> Result<(), DriverError> {
        self.send_pending(batch_id).await?;
        let ids = self.custom_ids(batch_id).await?;
        let pricing = Pricing {
            prices: &self.prices,
            provider: provider.name(),
            model: batch.key().map_or("", |key| key.model.as_str()),
        };
        let (mut succeeded, mut failed) = (0, 0);
        for file in [
            &batch.provider().output_file_id,
            &batch.provider().error_file_id,
        ]
        .into_iter()
        .flatten()
        {
            let mut lines = provider.results(file).await?;
            let mut chunk = HashMap::with_capacity(RESULTS_CHUNK);
            while let Some(line) = next_line(&mut lines, batch_id).await? {
                let Some(event) = outcome(line.clone(), &pricing) else {
                    continue;
                };
                if matches!(event, RequestEvent::ResultRecorded { .. }) {
                    succeeded += 1;
                } else {
                    failed += 1;
                }
                if let Some(request_id) = ids.get(&line.custom_id) {
                    chunk.insert(request_id.to_string(), event);
                }
                if chunk.len() == RESULTS_CHUNK {
                    self.apply_results(batch_id, batch, std::mem::take(&mut chunk))
                        .await?;
                }
            }
            self.apply_results(batch_id, batch, chunk).await?;
        }
        // Requests the provider never answered (an expired batch) expire.
        let expired = RequestEvent::Expired { at: Utc::now() };
        self.move_requests(batch_id, expired).await?;
        let command = BatchCommand::MarkDownloaded {
            succeeded,
            failed,
            at: Utc::now(),
        };
        self.command(batch_id, command).await
    }

    /// Records a chunk of results (request id → its result or error event), and counts the
    /// tokens of the results recorded for the batch's client and model.
    async fn apply_results(
        &self,
        batch_id: Uuid,
        batch: &Batch,
        results: HashMap<String, RequestEvent>,
    ) -> Result<(), DriverError> {
        let ids: Vec<String> = results.keys().cloned().collect();
        let moved = self
            .apply_moves(batch_id, &ids, request_moves::each(&results))
            .await?;
        let recorded = moved.iter().filter_map(|id| match results.get(id) {
            Some(RequestEvent::ResultRecorded { response, cost, .. }) => Some((response, cost)),
            _ => None,
        });
        let mut spent = Spent::default();
        for (response, cost) in recorded {
            spent.add(response, cost.as_ref());
        }
        if let Some(key) = batch.key() {
            crate::metrics::tokens_used(&key.owner, &key.model, spent.input, spent.output);
            crate::metrics::cost(&key.owner, &key.model, spent.nano_usd, spent.unpriced);
        }
        Ok(())
    }

    pub(super) async fn custom_ids(
        &self,
        batch_id: Uuid,
    ) -> Result<HashMap<String, Uuid>, sqlx::Error> {
        let rows: Vec<(String, Uuid)> = sqlx::query_as(
            "SELECT custom_id, request_id FROM batch_custom_ids WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    pub(super) async fn request_ids(&self, batch_id: Uuid) -> Result<Vec<Uuid>, sqlx::Error> {
        Ok(self.custom_ids(batch_id).await?.into_values().collect())
    }

    /// The JSONL input of a batch: every request it accepted, except cancelled ones.
    pub(super) async fn input_file(&self, batch_id: Uuid) -> Result<Bytes, DriverError> {
        // The batch stream alone decides: it serializes withdrawals with closing.
        let payloads: Vec<Value> = sqlx::query_scalar(
            "SELECT payload FROM events
              WHERE aggregate_type = 'Batch' AND aggregate_id = $1
                AND event_type IN ('BatchRequestsAdded', 'BatchRequestWithdrawn')
              ORDER BY sequence",
        )
        .bind(batch_id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let mut entries = Vec::new();
        let mut withdrawn = HashSet::new();
        for payload in payloads {
            match serde_json::from_value(payload) {
                Ok(BatchEvent::RequestsAdded { entries: added, .. }) => entries.extend(added),
                Ok(BatchEvent::RequestWithdrawn { request_id, .. }) => {
                    withdrawn.insert(request_id);
                }
                _ => {}
            }
        }
        let mut jsonl = String::new();
        for entry in entries
            .into_iter()
            .filter(|e| !withdrawn.contains(&e.request_id))
        {
            jsonl.push_str(&entry.spec.jsonl_line());
            jsonl.push('\n');
        }
        Ok(Bytes::from(jsonl))
    }
}

/// The next readable results line. A line the provider wrote but we cannot read is skipped
/// (its request later expires as unanswered) instead of stalling the batch; a broken
/// download is an error, and the download step runs again.
async fn next_line(
    lines: &mut futures::stream::BoxStream<'static, Result<ResultLine, ProviderError>>,
    batch_id: Uuid,
) -> Result<Option<ResultLine>, DriverError> {
    loop {
        match lines.try_next().await {
            Err(ProviderError::Malformed(reason)) => {
                tracing::warn!(batch.id = %batch_id, %reason, "skipping an unreadable results line");
            }
            other => return Ok(other?),
        }
    }
}

/// The request event a results line stands for.
fn outcome(line: ResultLine, pricing: &Pricing) -> Option<RequestEvent> {
    let at = Utc::now();
    match (line.response, line.error) {
        (Some(response), None) if (200..300).contains(&response.status_code) => {
            Some(RequestEvent::ResultRecorded {
                cost: pricing.cost(&response.body, at),
                response: response.body,
                at,
            })
        }
        (Some(response), None) => Some(RequestEvent::Failed {
            error: json!({ "status_code": response.status_code, "body": response.body }),
            at,
        }),
        (_, Some(error)) => Some(RequestEvent::Failed { error, at }),
        (None, None) => None,
    }
}

/// How one batch's results are priced.
struct Pricing<'a> {
    prices: &'a Prices,
    /// The provider's name in the price table.
    provider: &'static str,
    /// The batch's model, as its requests name it.
    model: &'a str,
}

impl Pricing<'_> {
    /// What `response` cost: priced by the requests' model, or else by the model the
    /// response names (a dated snapshot, say).
    fn cost(&self, response: &Value, at: DateTime<Utc>) -> Option<Cost> {
        let usage = TokenUsage::of(response);
        let price = |model: &str| self.prices.cost(self.provider, model, at, usage);
        price(self.model).or_else(|| response["model"].as_str().and_then(price))
    }
}
