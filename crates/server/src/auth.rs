//! Bearer-token auth for `/v1/*` when the server has an API key.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::error::ApiError;
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
            .and_then(bearer_token);
        if !given.is_some_and(|g| key.matches(g)) {
            return Ok(routes::refuse(&state, &request, ApiError::Unauthorized));
        }
    }
    Ok(next.run(request).await)
}

/// The token of an `Authorization: Bearer <token>` value; the scheme is matched without regard
/// to case (RFC 9110), the token trimmed.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_in_any_case() {
        for value in ["Bearer k1", "bearer k1", "BEARER   k1 ", " Bearer k1"] {
            assert_eq!(bearer_token(value), Some("k1"), "{value:?}");
        }
        for value in ["Basic k1", "Bearer", "Bearer ", "Bearerk1", ""] {
            assert_eq!(bearer_token(value), None, "{value:?}");
        }
    }
}
