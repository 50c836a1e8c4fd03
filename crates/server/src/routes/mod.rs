//! The handlers, one file per endpoint family, and the small informational endpoints here.

pub(crate) mod chat;
pub(crate) mod completions;

use std::future::Future;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use tracing::Instrument;
use wayfinder_core::clock::monotonic_now;
use wayfinder_trace::names::TRACE_RESPONSE;

use crate::endpoints::Endpoint;
use crate::error::ApiError;
use crate::journey::Journey;
use crate::state::AppState;
use crate::wire::{ModelCard, ModelList};

/// Runs a generation endpoint's `respond` inside the request's journey: the journey (and its
/// `llm_request` span) starts as the request arrives, before its body is read; log lines
/// written meanwhile sit in the journey's log span ([`crate::journey::RequestLog`]); the
/// response carries the id either way.
pub(crate) async fn in_journey<F, Fut>(
    state: AppState,
    request: Request,
    endpoint: Endpoint,
    respond: F,
) -> Response
where
    F: FnOnce(AppState, Request, Journey, f64) -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let arrival = monotonic_now();
    let id = state.new_id(endpoint.id_prefix);
    let journey = Journey::arrived(&state, request.headers(), id.clone(), arrival, endpoint);
    let log = journey.log();
    let trace_response = journey.trace_response();
    let response = match respond(state, request, journey, arrival)
        .instrument(log.for_future(&id))
        .await
    {
        Ok(response) => response,
        // The failure's log line carries the request's ids.
        Err(e) => log.span(&id).in_scope(|| e.into_response()),
    };
    with_ids(response, &id, trace_response.as_deref())
}

/// The header that carries the response id.
pub(crate) const REQUEST_ID: &str = "x-request-id";

/// Adds the `x-request-id` header and, for a traced request, `traceresponse`.
pub(crate) fn with_ids(mut response: Response, id: &str, trace_response: Option<&str>) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert(REQUEST_ID, v);
    }
    if let Some(v) = trace_response.and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert(TRACE_RESPONSE, v);
    }
    response
}

/// `GET /v1/models`.
pub(crate) async fn models(State(state): State<AppState>) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: vec![ModelCard {
            id: state.model_name().to_owned(),
            object: "model",
            created: state.created(),
            owned_by: "wayfinder",
            max_model_len: state.max_model_len(),
        }],
    })
}

/// `GET /health`: 200 while the engine runs, 503 once it has stopped.
pub(crate) async fn health(State(state): State<AppState>) -> Response {
    if state.engine().is_running() {
        (StatusCode::OK, Json(json!({ "status": "ok" }))).into_response()
    } else {
        ApiError::engine_not_running().into_response()
    }
}

/// `GET /version`.
pub(crate) async fn version() -> Json<serde_json::Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

/// A known path with the wrong method.
pub(crate) async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed(method.to_string())
}

/// Any other path.
pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::RouteNotFound(uri.path().to_owned())
}

/// The most header bytes (names and values) a request may carry; more get a 431 with an
/// OpenAI error body. (hyper answers past its own, larger buffer with a bare 431.)
pub(crate) const MAX_HEADER_BYTES: usize = 64 << 10;

/// Refuses with 413 at once a request whose `Content-Length` is over the body limit, before a
/// byte of the body is read (the body limit alone would read up to the limit first); and with
/// 431 one whose headers are over [`MAX_HEADER_BYTES`].
pub(crate) async fn refuse_announced_oversize(
    State(state): State<AppState>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let header_bytes: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        let error = ApiError::HeadersTooLarge {
            size: header_bytes,
            limit: MAX_HEADER_BYTES,
        };
        return refuse(&state, &request, error);
    }
    let limit = state.limits().max_body_bytes;
    let announced = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(length) if length > limit as u64 => {
            refuse(&state, &request, ApiError::BodyTooLarge { length, limit })
        }
        _ => next.run(request).await,
    }
}

/// The response refusing `request` before its handler: on a generation endpoint it still gets
/// its journey (and span), ended as failed with `error`.
pub(crate) fn refuse(state: &AppState, request: &Request, error: ApiError) -> Response {
    let Some(endpoint) = crate::endpoints::generation(request.uri().path()) else {
        return error.into_response();
    };
    let id = state.new_id(endpoint.id_prefix);
    let mut journey = Journey::arrived(
        state,
        request.headers(),
        id.clone(),
        monotonic_now(),
        endpoint,
    );
    let trace_response = journey.trace_response();
    journey.end(crate::journey::Outcome::Failed(&error));
    with_ids(error.into_response(), &id, trace_response.as_deref())
}

/// `GET /metrics`: OpenMetrics (with exemplars) to a scraper that asks for it, else the
/// Prometheus text format.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Response {
    let openmetrics = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let engine = state.engine().stats().await.ok();
    let spans = state
        .tracing()
        .map(|t| (t.stats(), t.config().max_queue_size));
    let body = state.metrics().render(engine.as_ref(), spans, openmetrics);
    let content_type = if openmetrics {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; version=0.0.4; charset=utf-8"
    };
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /journeys/api`: the journey history as JSON (`limit`, `status`, `min_e2e`).
pub(crate) async fn journeys_api(State(state): State<AppState>, uri: Uri) -> Response {
    let query = crate::history::Query::parse(uri.query().unwrap_or(""));
    let history = state.history();
    let (in_flight, recent) = history.snapshot(&query);
    Json(json!({
        "enabled": history.is_on(),
        "trace_url_template": state.trace_url_template(),
        "in_flight": in_flight,
        "recent": recent,
    }))
    .into_response()
}

/// `GET /journeys`: the journey viewer, one page with its script inline (no CDN); it reads
/// `/journeys/api`.
pub(crate) async fn journeys_page() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../journeys.html"),
    )
        .into_response()
}
