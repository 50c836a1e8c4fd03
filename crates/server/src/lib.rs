//! # wayfinder-server
//!
//! The OpenAI-compatible HTTP API (axum): chat and text completions, streaming over SSE or
//! not, model listing, health and version, bearer auth, backpressure and graceful shutdown. It
//! turns wire requests into the engine core's validated [`wayfinder_core::EngineRequest`]s and
//! the engine's token streams back into OpenAI responses; no HTTP type crosses into the core.
//!
//! # Layout
//! - [`app`]: the router, for in-process tests (`tower::ServiceExt::oneshot`); [`run`]: serve it
//!   on a listener until a shutdown signal, then drain within the shutdown timeout; `listen`:
//!   the bounded accept loop (connection limit, idle timeout) under it.
//! - [`state`]: [`AppState`], built from [`ServerParts`] (engine handle, tokenizer, chat
//!   template, model name, limits): what handlers share, and the in-flight budget (429).
//! - [`wire`]: the OpenAI request and response DTOs (serde only).
//! - `validation`: wire request → engine requests, in one place; every 4xx but auth is here.
//! - `generation`: one API request in flight — the `n` engine requests fanned out and merged,
//!   detokenisation, stop strings, logprobs, usage.
//! - `journey`: each request's milestones (arrival, hand-off, first output) and the one owner
//!   of its end (`Journey::end`: departed, failed or disconnected, decided once) and, when
//!   journey tracing samples it in, its `llm_request` span; the carrier it puts in the engine
//!   requests makes the engine's `llm_core` span its child.
//! - `sse`: OpenAI's streaming framing; `routes`: the handlers (`routes/chat.rs`,
//!   `routes/completions.rs`, and the small endpoints); `auth`: the bearer check.
//! - `metrics`: `GET /metrics` (prometheus-client; exemplars pointing at `llm_request`),
//!   recorded once per request by the journey's end; `history`: the journey history behind
//!   `GET /journeys/api` and the page `GET /journeys` (`journeys.html`, embedded).
//! - `endpoints`: the generation endpoints' table (path, operation name, id prefix), written
//!   once for the router, the handlers, auth and the journey.
//! - [`error`]: [`ApiError`], the one error type, with the one mapping to HTTP and every
//!   conversion into it.
//!
//! # Request path
//! ```text
//! POST ─▶ Journey (llm_request starts) ─▶ Json<wire::…> (or JsonRejection ─▶ ApiError)
//!   ─▶ validation ─▶ ValidRequest
//!   ─▶ Generation::start: permit (or 429), EngineHandle::add_request × n
//!   ─▶ Generation::next: merged outputs ─▶ detokenizer ─▶ stop strings ─▶ Delta
//!   ─▶ JSON body, or SSE chunks ─▶ [DONE]
//! client gone ─▶ future or body stream dropped ─▶ Generation dropped ─▶ engine aborts, frees KV
//! ```

mod auth;
mod endpoints;
pub mod error;
mod generation;
mod history;
mod journey;
mod listen;
mod metrics;
mod routes;
mod sse;
pub mod state;
mod validation;
pub mod wire;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use tokio::net::TcpListener;

pub use error::ApiError;
pub use state::{AppState, Limits, ServerParts};
pub use validation::{MAX_CHOICES, MAX_N};

/// The router: `/v1/chat/completions`, `/v1/completions`, `/v1/models` (behind the API key
/// when one is set), `/health`, `/metrics` and `/version`.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route(endpoints::CHAT.path, post(routes::chat::handle))
        .route(
            endpoints::COMPLETIONS.path,
            post(routes::completions::handle),
        )
        .route("/v1/models", get(routes::models))
        .route("/journeys/api", get(routes::journeys_api))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/journeys", get(routes::journeys_page))
        .route("/version", get(routes::version))
        .merge(v1)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.limits().max_body_bytes))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            routes::refuse_announced_oversize,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` resolves; then stops accepting connections,
/// lets requests in flight finish within [`Limits::shutdown_timeout`], and after that aborts
/// what is left by shutting the engine down. Connections are bounded as `listen.rs` says.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = state.limits().clone();
    let engine = state.engine().clone();
    let open = listen::serve(listener, app(state), &limits, shutdown).await;
    tracing::info!("shutting down: no new connections; letting requests in flight finish");
    let closed = open.shutdown();
    tokio::pin!(closed);
    if tokio::time::timeout(limits.shutdown_timeout, &mut closed)
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?limits.shutdown_timeout, "aborting the requests still in flight");
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
        closed.await;
    }
    Ok(())
}
