//! LLM requests over GraphQL: submitting (one or in bulk), owner actions, and queries.

use async_graphql::connection::Connection;
use async_graphql::{ComplexObject, Context, InputObject, Json, Object, OneofObject, SimpleObject};
use chronicle_aggregates::request::RequestSpec;
use chronicle_aggregates::Delivery;
use chronicle_projections::delivery_attempts;
use chronicle_projections::requests::{self, RequestFilter, RequestRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::deliveries::DeliveryAttempt;
use super::error::ItemProblem;
use super::outcome::{idempotency, run_action, CommandOutcome};
use super::pagination::{connection, keyset_page, KeysetCursor, KeysetPage};
use super::{ApiError, Caller};
use crate::llm::{Accepted, Submitter};
use crate::reads::Reads;
use crate::security::EgressPolicy;

/// Most requests in one `submitRequests` call.
pub(crate) const MAX_BULK: usize = 50_000;

/// How a request's result reaches its owner: exactly one of the fields.
#[derive(OneofObject, Serialize)]
pub(crate) enum DeliveryInput {
    /// POST the result to this absolute http(s) URL.
    WebhookUrl(String),
    /// Publish the result to this RabbitMQ queue (declared durable if missing).
    RabbitmqQueue(String),
    /// Publish the result to an existing RabbitMQ exchange with a routing key.
    RabbitmqExchange(RabbitmqExchangeInput),
    /// Keep the result until fetched and acknowledged (the value is ignored).
    Poll(bool),
}

/// A RabbitMQ exchange and routing key.
#[derive(InputObject, Serialize)]
pub(crate) struct RabbitmqExchangeInput {
    /// The exchange; it must exist.
    exchange: String,
    /// The routing key (may be empty).
    routing_key: String,
}

/// One LLM request to submit.
#[derive(InputObject, Serialize)]
pub(crate) struct SubmitRequestInput {
    /// Your own id for matching the result; 1–64 characters, unique within its batch.
    custom_id: String,
    /// `/v1/chat/completions`, `/v1/embeddings`, `/v1/responses` or `/v1/completions`.
    endpoint: String,
    /// The model; `body.model`, if present, must equal it.
    model: String,
    /// The request body for the provider: a JSON object of at most 1 MB.
    body: Json<Value>,
    /// How the result is delivered.
    delivery: DeliveryInput,
}

impl SubmitRequestInput {
    /// The request, with a webhook target the egress policy refuses by address refused here
    /// (one named by host is checked when it is resolved, at delivery).
    fn parse(self, egress: &EgressPolicy) -> Result<RequestSpec, Vec<String>> {
        let delivery = match self.delivery {
            DeliveryInput::WebhookUrl(url) => match egress.check_literal(&url) {
                Ok(()) => Delivery::webhook(&url),
                Err(refused) => Err(format!("webhookUrl: {refused}")),
            },
            DeliveryInput::RabbitmqQueue(queue) => Delivery::rabbitmq(&queue),
            DeliveryInput::RabbitmqExchange(target) => {
                Delivery::rabbitmq_exchange(&target.exchange, &target.routing_key)
            }
            DeliveryInput::Poll(_) => Ok(Delivery::Poll),
        };
        RequestSpec::parse(
            self.custom_id,
            &self.endpoint,
            self.model,
            self.body.0,
            delivery,
        )
    }
}

/// A request accepted into a batch.
#[derive(SimpleObject)]
pub(crate) struct SubmittedRequest {
    /// The request's id.
    request_id: Uuid,
    /// The batch it joined.
    batch_id: Uuid,
    /// Your custom id.
    custom_id: String,
    /// Where its append sits in the global log: send it as `x-chronicle-after` to read this
    /// write from a replica. Null when an earlier call with the same key accepted it.
    cursor: Option<String>,
}

impl From<Accepted> for SubmittedRequest {
    fn from(accepted: Accepted) -> Self {
        Self {
            request_id: accepted.request_id,
            batch_id: accepted.batch_id,
            custom_id: accepted.custom_id,
            cursor: accepted.cursor.map(|cursor| cursor.to_string()),
        }
    }
}

/// What a result cost.
#[derive(SimpleObject)]
pub(crate) struct RequestCost {
    /// US dollars.
    usd: f64,
    /// The price table entry it was priced with: `provider/model@from`.
    price: String,
}

/// An LLM request and where it stands.
#[derive(SimpleObject)]
#[graphql(complex)]
pub(crate) struct LlmRequest {
    /// The request's id.
    id: Uuid,
    /// The batch it joined.
    batch_id: Uuid,
    /// Your custom id.
    custom_id: String,
    /// The endpoint path.
    endpoint: String,
    /// The model.
    model: String,
    /// `pending`, `provider_processing`, `provider_processed`, `delivering`, `delivered`,
    /// `failed`, `delivery_failed`, `expired`, `cancelled`, `consumed` or `consume_failed`.
    status: String,
    /// How the result is delivered.
    delivery: Json<Value>,
    /// The body sent to the provider.
    body: Json<Value>,
    /// The provider's response, once it arrived.
    response: Option<Json<Value>>,
    /// What the result cost, priced when it arrived; null before, or when no price applied.
    cost: Option<RequestCost>,
    /// The provider's error, if any.
    error: Option<Json<Value>>,
    /// Delivery rounds started (each redelivery starts one); 0 before delivery.
    delivery_rounds: i32,
    /// Attempts in the current delivery round.
    delivery_attempt_count: i32,
    /// When the next delivery attempt is due, after a failed one.
    next_attempt_at: Option<DateTime<Utc>>,
    /// Why the last delivery attempt failed, or why delivery failed.
    delivery_error: Option<String>,
    /// Version of the request's event stream that this view reflects.
    version: i64,
    /// When it was submitted.
    created_at: DateTime<Utc>,
    /// When it last changed.
    updated_at: DateTime<Utc>,
}

impl From<RequestRow> for LlmRequest {
    fn from(row: RequestRow) -> Self {
        Self {
            id: row.id,
            batch_id: row.batch_id,
            custom_id: row.custom_id,
            endpoint: row.endpoint,
            model: row.model,
            status: row.status,
            delivery: Json(row.delivery),
            body: Json(row.body),
            response: row.response.map(Json),
            cost: row
                .cost_nano_usd
                .zip(row.cost_price)
                .map(|(nano_usd, price)| RequestCost {
                    usd: nano_usd as f64 / 1e9,
                    price,
                }),
            error: row.error.map(Json),
            delivery_rounds: row.delivery_rounds,
            delivery_attempt_count: row.delivery_attempts,
            next_attempt_at: row.next_attempt_at,
            delivery_error: row.delivery_error,
            version: row.version,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[ComplexObject]
impl LlmRequest {
    /// Every delivery attempt, oldest first.
    async fn delivery_attempts(&self, ctx: &Context<'_>) -> Result<Vec<DeliveryAttempt>, ApiError> {
        let pool = &ctx.data_unchecked::<Reads>().pool;
        let rows = delivery_attempts::of_request(pool, self.id).await?;
        Ok(rows.into_iter().map(DeliveryAttempt::from).collect())
    }
}

/// Narrows a request list; all fields optional.
#[derive(InputObject, Default)]
pub(crate) struct RequestFilterInput {
    /// Only this status.
    status: Option<String>,
    /// Only this model.
    model: Option<String>,
    /// Only this endpoint path.
    endpoint: Option<String>,
    /// Submitted at or after.
    created_from: Option<DateTime<Utc>>,
    /// Submitted before.
    created_until: Option<DateTime<Utc>>,
}

/// A page of requests, newest first.
pub(crate) async fn request_page(
    ctx: &Context<'_>,
    filter: RequestFilter,
    first: Option<i32>,
    after: Option<String>,
) -> Result<Connection<KeysetCursor, LlmRequest>, ApiError> {
    let KeysetPage { size, after, limit } = keyset_page(first, after.as_deref())?;
    let rows = requests::list(&ctx.data_unchecked::<Reads>().pool, &filter, after, limit).await?;
    Ok(connection(rows, size, after.is_some(), false, |row| {
        (KeysetCursor(row.created_at, row.id), LlmRequest::from(row))
    }))
}

/// Request queries.
#[derive(Default)]
pub(crate) struct RequestQuery;

#[Object]
impl RequestQuery {
    /// One of your requests. Errors: `NOT_FOUND`.
    async fn request(&self, ctx: &Context<'_>, id: Uuid) -> Result<LlmRequest, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        requests::get(&ctx.data_unchecked::<Reads>().pool, caller.scope(), id)
            .await?
            .map(LlmRequest::from)
            .ok_or(ApiError::NotFound("request"))
    }

    /// Your requests (an admin's: everyone's), newest first. Errors: `VALIDATION` (bad cursor or page size).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn requests(
        &self,
        ctx: &Context<'_>,
        filter: Option<RequestFilterInput>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, LlmRequest>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let filter = filter.unwrap_or_default();
        let filter = RequestFilter {
            owner: caller.scope().map(str::to_owned),
            status: filter.status,
            model: filter.model,
            endpoint: filter.endpoint,
            batch_id: None,
            created_from: filter.created_from,
            created_until: filter.created_until,
            polled_only: false,
        };
        request_page(ctx, filter, first, after).await
    }

    /// Poll delivery: your results not yet acknowledged, newest first. Fetch, use, then call
    /// `acknowledgeResult` (or `reportResultFailure`). Errors: `VALIDATION` (cursor, page size).
    #[graphql(complexity = "super::pagination::cost(first, child_complexity)")]
    async fn unacknowledged_results(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Page size, 1 to 1000 (default 100).")] first: Option<i32>,
        #[graphql(desc = "Continue after this cursor.")] after: Option<String>,
    ) -> Result<Connection<KeysetCursor, LlmRequest>, ApiError> {
        let caller = Caller::from_ctx(ctx)?;
        let filter = RequestFilter {
            owner: Some(caller.actor.clone()),
            status: Some("provider_processed".into()),
            polled_only: true,
            ..RequestFilter::default()
        };
        request_page(ctx, filter, first, after).await
    }
}

/// Request mutations.
#[derive(Default)]
pub(crate) struct RequestMutation;

#[Object]
impl RequestMutation {
    /// Submits one request into the open batch of its (endpoint, model).
    /// Errors: `VALIDATION` (with `items` saying what is wrong), `NOT_SERVED` (no provider
    /// for its endpoint is configured).
    async fn submit_request(
        &self,
        ctx: &Context<'_>,
        input: SubmitRequestInput,
        #[graphql(desc = "Retrying with the same key returns the first outcome.")]
        idempotency_key: Option<String>,
    ) -> Result<SubmittedRequest, ApiError> {
        let mut accepted = submit(ctx, vec![input], idempotency_key).await?;
        accepted
            .pop()
            .ok_or(ApiError::NotFound("submitted request"))
    }

    /// Submits up to 50,000 requests. All or nothing: if any item is invalid, nothing is
    /// written and `extensions.items` lists each bad item's index and reasons.
    /// Errors: `VALIDATION`, `NOT_SERVED` (an item's endpoint has no configured provider).
    async fn submit_requests(
        &self,
        ctx: &Context<'_>,
        requests: Vec<SubmitRequestInput>,
        #[graphql(desc = "Retrying with the same key returns the first outcome.")]
        idempotency_key: Option<String>,
    ) -> Result<Vec<SubmittedRequest>, ApiError> {
        submit(ctx, requests, idempotency_key).await
    }

    /// Cancels a pending request while its batch is still building.
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    async fn cancel_request(
        &self,
        ctx: &Context<'_>,
        request_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        run_action(
            ctx,
            idempotency_key,
            &("cancelRequest", request_id),
            |actions, context, key| async move {
                actions.cancel_request(&context, request_id, key).await
            },
        )
        .await
    }

    /// Poll delivery: acknowledges a fetched result.
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    async fn acknowledge_result(
        &self,
        ctx: &Context<'_>,
        request_id: Uuid,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        run_action(
            ctx,
            idempotency_key,
            &("acknowledgeResult", request_id),
            |actions, context, key| async move {
                actions.acknowledge_result(&context, request_id, key).await
            },
        )
        .await
    }

    /// Poll delivery: reports that a fetched result could not be used.
    /// Errors: `NOT_FOUND`, `INVALID_TRANSITION`, `CONFLICT`.
    async fn report_result_failure(
        &self,
        ctx: &Context<'_>,
        request_id: Uuid,
        reason: String,
        idempotency_key: Option<String>,
    ) -> Result<CommandOutcome, ApiError> {
        if reason.contains('\0') || reason.chars().count() > 10_000 {
            return Err(ApiError::Validation(
                "reason must be at most 10,000 characters without NUL".into(),
            ));
        }
        let arguments = ("reportResultFailure", request_id, reason.clone());
        run_action(
            ctx,
            idempotency_key,
            &arguments,
            |actions, context, key| async move {
                actions
                    .report_result_failure(&context, request_id, reason, key)
                    .await
            },
        )
        .await
    }
}

async fn submit(
    ctx: &Context<'_>,
    inputs: Vec<SubmitRequestInput>,
    idempotency_key: Option<String>,
) -> Result<Vec<SubmittedRequest>, ApiError> {
    let caller = Caller::from_ctx(ctx)?;
    if inputs.is_empty() || inputs.len() > MAX_BULK {
        return Err(ApiError::Validation(format!(
            "submit 1 to {MAX_BULK} requests per call"
        )));
    }
    let key = idempotency(idempotency_key, &("submitRequests", &inputs))?;
    let mut specs = Vec::with_capacity(inputs.len());
    let mut problems = Vec::new();
    let egress = ctx.data_unchecked::<EgressPolicy>();
    for (index, input) in inputs.into_iter().enumerate() {
        match input.parse(egress) {
            Ok(spec) => specs.push(spec),
            Err(reasons) => problems.push(ItemProblem { index, reasons }),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::InvalidItems(problems));
    }
    let accepted = ctx
        .data_unchecked::<Submitter>()
        .submit(&caller.command_context(), &caller.actor, specs, key)
        .await?;
    Ok(accepted.into_iter().map(SubmittedRequest::from).collect())
}
