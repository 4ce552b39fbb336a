//! HTTP routes: GraphQL (POST, GraphiQL on GET, websocket subscriptions on GET with an
//! upgrade), `/health` (the process answers), `/ready` (database reachable, migrated) and
//! `/metrics` (Prometheus). GraphQL calls need an API key; GraphiQL's page, `/health`,
//! `/ready` and `/metrics` stay open.

use std::time::Duration;

mod socket;

use async_graphql::http::{GraphiQLSource, WebSocketProtocols, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::extract::{FromRequest, FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;
use uuid::Uuid;

use chronicle_aggregates::client::Role;
use chronicle_aggregates::ErrorCode;
use chronicle_projections::LogCursor;

use crate::api::{Caller, ChronicleSchema};
use crate::db;
use crate::reads::ReadRouter;
use crate::security::{Authenticator, Revocations};

const CORRELATION_HEADER: &str = "x-correlation-id";

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The GraphQL schema with its services.
    pub schema: ChronicleSchema,
    /// The database, for readiness.
    pub pool: PgPool,
    /// Checks API keys; `None` serves without authentication (`--insecure-dev`).
    pub authenticator: Option<Authenticator>,
    /// Key revocations, to close the sockets of revoked keys (`None` without authentication).
    pub revocations: Option<Revocations>,
    /// Where each request reads, once the read models have reached its position.
    pub reads: ReadRouter,
    /// Bounds on one HTTP request.
    pub limits: HttpLimits,
}

/// Bounds on one HTTP request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest a GraphQL request (not a subscription) may take.
    pub request_timeout: Duration,
    /// Operations one websocket may run at once.
    pub max_socket_operations: usize,
}

/// The service's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(prometheus))
        .layer(RequestBodyLimitLayer::new(state.limits.max_body_bytes))
        .with_state(state)
}

/// Prometheus exposition of the process's metrics and the database's gauges.
async fn prometheus(State(state): State<AppState>) -> Response {
    let body = crate::metrics::render(&state.pool).await;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// A GraphQL request over HTTP. The key is checked before the body is read: a caller without
/// one costs a header parse, whatever body it sends.
async fn graphql_post(State(state): State<AppState>, request: Request) -> Response {
    let caller = match authenticate(&state, request.headers()).await {
        Ok((caller, _)) => caller,
        Err(refusal) => return refusal.into_response(),
    };
    let after = match position_named(request.headers()) {
        Ok(after) => after,
        Err(refusal) => return refusal.into_response(),
    };
    let request =
        match GraphQLRequest::<async_graphql_axum::rejection::GraphQLRejection>::from_request(
            request,
            &(),
        )
        .await
        {
            Ok(request) => request,
            Err(rejection) => return rejection.into_response(),
        };
    let request = match routed(&state, request.into_inner(), after).await {
        Ok(request) => request,
        Err(refusal) => return refusal.into_response(),
    };
    let span = tracing::info_span!("graphql", correlation_id = %caller.correlation_id, actor = %caller.actor);
    let execution = state.schema.execute(request.data(caller)).instrument(span);
    match tokio::time::timeout(state.limits.request_timeout, execution).await {
        Ok(response) => GraphQLResponse::from(response).into_response(),
        Err(_) => Refusal::TimedOut(state.limits.request_timeout).into_response(),
    }
}

/// The request, reading from where the router sends it (a query may go to the replica), once
/// the read models there have applied the log up to `after`.
async fn routed(
    state: &AppState,
    mut request: async_graphql::Request,
    after: Option<LogCursor>,
) -> Result<async_graphql::Request, Refusal> {
    let reads_only = crate::api::is_query(&mut request);
    let reads = state
        .reads
        .route(reads_only, after, AFTER_WAIT)
        .await
        .map_err(|not_yet| Refusal::NotYet(not_yet.to_string()))?;
    Ok(match reads {
        Some(reads) => request.data(reads),
        None => request,
    })
}

/// GraphiQL for browsers; a graphql-transport-ws (or graphql-ws) session for upgrades. The
/// key comes in the upgrade's `Authorization` header or, from browsers, in the
/// `connection_init` payload (`{"Authorization": "Bearer <key>"}`).
async fn graphql_get(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _body) = request.into_parts();
    if !parts.headers.contains_key(axum::http::header::UPGRADE) {
        return Html(
            GraphiQLSource::build()
                .endpoint("/graphql")
                .subscription_endpoint("/graphql")
                .finish(),
        )
        .into_response();
    }
    let Some(protocol) = websocket_protocol(&parts.headers) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    // Watch revocations before the key is checked, so none committed after the check is
    // missed.
    let revocations = state.revocations.as_ref().map(Revocations::watch);
    let from_header = if parts.headers.contains_key(AUTHORIZATION) || state.authenticator.is_none()
    {
        match authenticate(&state, &parts.headers).await {
            Ok(proved) => Some(proved),
            Err(refusal) => return refusal.into_response(),
        }
    } else {
        None
    };
    let correlation_id = correlation_id(&parts.headers);
    let span = tracing::info_span!("subscription", correlation_id = %correlation_id);
    let session = socket::Session {
        schema: state.schema,
        protocol,
        authenticator: state.authenticator.clone(),
        revocations,
        max_operations: state.limits.max_socket_operations,
    };
    let authenticator = state.authenticator;
    let authorize: socket::Authorize = Box::new(move |payload| {
        Box::pin(async move {
            match (from_header, authenticator) {
                (Some(proved), _) => Ok(proved),
                (None, Some(authenticator)) => {
                    let token = payload_token(&payload).unwrap_or_default();
                    identify(&authenticator, token, correlation_id)
                        .await
                        .map_err(|refusal| {
                            let code = refusal.code();
                            async_graphql::Error::new(format!("{code}: {}", refusal.message()))
                        })
                }
                (None, None) => Ok((anonymous(correlation_id), None)),
            }
        })
    });
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| socket::serve(socket, session, authorize).instrument(span))
        .into_response()
}

/// The GraphQL websocket protocol the client offers first among those served.
fn websocket_protocol(headers: &HeaderMap) -> Option<WebSocketProtocols> {
    headers
        .get(SEC_WEBSOCKET_PROTOCOL)?
        .to_str()
        .ok()?
        .split(',')
        .find_map(|offered| offered.trim().parse().ok())
}

/// How long `/ready` waits for the database before it answers 503: a probe wants an answer,
/// not the pool's acquire timeout.
const READY_WAIT: Duration = Duration::from_secs(2);

async fn ready(State(state): State<AppState>) -> StatusCode {
    let ready = tokio::time::timeout(READY_WAIT, db::is_ready(&state.pool)).await;
    if ready.unwrap_or(false) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The header a request names a log position with (a cursor a mutation returned): it is
/// served once the read models have applied the log up to there.
const AFTER_HEADER: &str = "x-chronicle-after";
/// The longest a request waits for the read models.
const AFTER_WAIT: Duration = Duration::from_secs(5);

/// The log position the request names in [`AFTER_HEADER`], if any.
fn position_named(headers: &HeaderMap) -> Result<Option<LogCursor>, Refusal> {
    let Some(value) = headers.get(AFTER_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .map(Some)
        .ok_or(Refusal::BadPosition)
}

/// Why a request was not served.
enum Refusal {
    /// No key, or not a valid one.
    Unauthenticated(&'static str),
    /// The key could not be checked: the database is unreachable.
    Unavailable,
    /// The request ran past the timeout.
    TimedOut(Duration),
    /// `x-chronicle-after` is not a log cursor.
    BadPosition,
    /// The read models did not reach the position in time.
    NotYet(String),
}

impl Refusal {
    fn code(&self) -> ErrorCode {
        match self {
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::Unavailable | Self::TimedOut(_) | Self::NotYet(_) => ErrorCode::Unavailable,
            Self::BadPosition => ErrorCode::Validation,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Unauthenticated(why) => (*why).to_owned(),
            Self::Unavailable => "the database is unavailable; retry later".into(),
            Self::BadPosition => format!(
                "`{AFTER_HEADER}` takes a log cursor (`c2.<position>`) a mutation returned"
            ),
            Self::NotYet(why) => why.clone(),
            Self::TimedOut(limit) => format!(
                "the request took longer than {} s; a mutation may have taken effect, retry it with the same idempotency key",
                limit.as_secs()
            ),
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Unavailable | Self::NotYet(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::BadPosition => StatusCode::BAD_REQUEST,
        };
        let body = serde_json::json!({
            "data": null,
            "errors": [{ "message": self.message(), "extensions": { "code": self.code().as_str() } }],
        });
        let mut response = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The caller a request's `Authorization: Bearer` key proves (anyone, as an admin named
/// `anonymous`, under `--insecure-dev`).
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Caller, Option<socket::Grant>), Refusal> {
    let correlation_id = correlation_id(headers);
    let Some(authenticator) = &state.authenticator else {
        return Ok((anonymous(correlation_id), None));
    };
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or_default();
    identify(authenticator, token, correlation_id).await
}

/// The caller `token` proves, and the key as a socket keeps it.
async fn identify(
    authenticator: &Authenticator,
    token: &str,
    correlation_id: String,
) -> Result<(Caller, Option<socket::Grant>), Refusal> {
    if token.is_empty() {
        return Err(Refusal::Unauthenticated(
            "send an API key: `Authorization: Bearer <key>`",
        ));
    }
    match authenticator.authenticate(token.trim()).await {
        Ok(Some(identity)) => {
            let caller = Caller {
                actor: identity.client_id,
                correlation_id,
                authority: identity.role,
            };
            let grant = socket::Grant {
                key_id: identity.key_id,
                token: token.trim().to_owned().into(),
            };
            Ok((caller, Some(grant)))
        }
        Ok(None) => Err(Refusal::Unauthenticated(
            "the API key is malformed, unknown or revoked",
        )),
        Err(error) => {
            tracing::warn!(%error, "could not check an API key");
            Err(Refusal::Unavailable)
        }
    }
}

/// The key in a websocket's `connection_init` payload.
fn payload_token(payload: &serde_json::Value) -> Option<&str> {
    ["Authorization", "authorization"]
        .iter()
        .find_map(|name| payload.get(name)?.as_str())
        .map(|value| value.strip_prefix("Bearer ").unwrap_or(value))
}

fn anonymous(correlation_id: String) -> Caller {
    Caller {
        actor: "anonymous".to_owned(),
        correlation_id,
        authority: Role::Admin,
    }
}

/// The request's `x-correlation-id` if it is a safe one, else a new id.
fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| is_valid_correlation_id(value))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

/// Printable ASCII without spaces, at most 128 characters: safe to log and to store.
fn is_valid_correlation_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}
