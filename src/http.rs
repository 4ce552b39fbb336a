//! HTTP routes: GraphQL (POST, GraphiQL on GET, websocket subscriptions on GET with an
//! upgrade), `/health` (the process answers), `/ready` (database reachable, migrated) and
//! `/metrics` (Prometheus).

use async_graphql::http::{GraphiQLSource, ALL_WEBSOCKET_PROTOCOLS};
use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLRequest, GraphQLResponse, GraphQLWebSocket};
use axum::extract::{FromRequestParts, Request, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;
use tower_http::limit::RequestBodyLimitLayer;
use tracing::Instrument;
use uuid::Uuid;

use crate::api::{Caller, ChronicleSchema};
use crate::command::Authority;
use crate::db;

const CORRELATION_HEADER: &str = "x-correlation-id";
/// Room for a bulk submission of 50,000 small requests.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The GraphQL schema with its services.
    pub schema: ChronicleSchema,
    /// The database, for readiness.
    pub pool: PgPool,
}

/// The service's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(prometheus))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
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

async fn graphql_post(
    State(state): State<AppState>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> GraphQLResponse {
    let caller = caller(&headers);
    let span = tracing::info_span!("graphql", correlation_id = %caller.correlation_id);
    state
        .schema
        .execute(request.into_inner().data(caller))
        .instrument(span)
        .await
        .into()
}

/// GraphiQL for browsers; a graphql-transport-ws (or graphql-ws) session for upgrades.
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
    let protocol = match GraphQLProtocol::from_request_parts(&mut parts, &()).await {
        Ok(protocol) => protocol,
        Err(rejection) => return rejection.into_response(),
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let caller = caller(&parts.headers);
    let span = tracing::info_span!("subscription", correlation_id = %caller.correlation_id);
    let mut data = Data::default();
    data.insert(caller);
    upgrade
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| {
            GraphQLWebSocket::new(socket, state.schema, protocol)
                .with_data(data)
                .serve()
                .instrument(span)
        })
        .into_response()
}

async fn ready(State(state): State<AppState>) -> StatusCode {
    if db::is_ready(&state.pool).await {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The caller of a request. Until API keys exist, everyone is `anonymous`, with an admin's
/// authority (the service is meant for a trusted network until then).
fn caller(headers: &HeaderMap) -> Caller {
    let correlation_id = headers
        .get(CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|value| is_valid_correlation_id(value))
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned);
    Caller {
        actor: "anonymous".to_owned(),
        correlation_id,
        authority: Authority::Admin,
    }
}

/// Printable ASCII without spaces, at most 128 characters: safe to log and to store.
fn is_valid_correlation_id(value: &str) -> bool {
    !value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic())
}
