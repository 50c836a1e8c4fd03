//! Bearer-token auth for `/v1/*` when the server has an API key.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use wayfinder_core::clock::monotonic_now;

use crate::endpoints;
use crate::error::ApiError;
use crate::journey::{Journey, Outcome};
use crate::routes;
use crate::state::AppState;

/// Lets the request through when no key is set or it carries `Authorization: Bearer <key>`;
/// otherwise 401 — which, on a generation endpoint, still gets its journey (and span).
pub(crate) async fn require_key(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = state.api_key() {
        let given = request
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes())) {
            let error = ApiError::Unauthorized;
            let Some(endpoint) = endpoints::generation(request.uri().path()) else {
                return Err(error);
            };
            let id = state.new_id(endpoint.id_prefix);
            let mut journey = Journey::arrived(
                &state,
                request.headers(),
                id.clone(),
                monotonic_now(),
                endpoint,
            );
            let trace_response = journey.trace_response();
            journey.end(Outcome::Failed(&error));
            return Ok(routes::with_ids(
                error.into_response(),
                &id,
                trace_response.as_deref(),
            ));
        }
    }
    Ok(next.run(request).await)
}

/// Compares without stopping at the first difference, so timing does not leak the key.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_keys() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
