//! [`ApiError`]: every way a request can fail, and its one mapping to an HTTP response with the
//! OpenAI error body `{"error": {"message", "type", "param", "code"}}`. Every conversion into
//! it — from the engine's errors and finish statuses, the text tools' errors, validation's —
//! is here too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use wayfinder_core::{EngineError, FinishStatus, InvalidRequest};
use wayfinder_text::TextError;

/// Seconds a client is told to wait after a 429.
const RETRY_AFTER_SECS: &str = "1";

/// Why the API refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not the JSON the endpoint takes (malformed, wrong types, too big, …).
    #[error("{0}")]
    Json(#[from] JsonRejection),
    /// A field has a value out of its range, or fields contradict each other.
    #[error("{message}")]
    Invalid {
        /// The offending field.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// A feature this server does not implement (tools, images, …).
    #[error("{message}")]
    Unsupported {
        /// The field asking for it.
        param: String,
        /// What is not supported.
        message: String,
    },
    /// The prompt, with the tokens asked for, does not fit in the context.
    #[error("{0}")]
    ContextLength(String),
    /// The request's headers are larger than the server takes.
    #[error("the request's headers take {size} bytes; this server takes at most {limit}")]
    HeadersTooLarge {
        /// Their size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The body announced (`Content-Length`) is over the server's limit; refused before reading
    /// it.
    #[error("the request body of {length} bytes is over this server's limit of {limit} bytes")]
    BodyTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// The request names a model this server does not serve.
    #[error("the model `{0}` does not exist")]
    ModelNotFound(String),
    /// No route for this path.
    #[error("no route for {0}")]
    RouteNotFound(String),
    /// The path exists, but not for this method.
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    /// A missing or wrong API key.
    #[error("invalid or missing API key; send it as `Authorization: Bearer <key>`")]
    Unauthorized,
    /// Too many requests waiting; try again later.
    #[error("the server is at capacity ({0} requests in flight); retry later")]
    Overloaded(usize),
    /// The engine is not running (shut down or died) or the request was aborted by shutdown.
    #[error("{0}")]
    Unavailable(String),
    /// The request ran past the server's `--request-timeout`.
    #[error("the request did not finish within the server's request timeout ({0:?})")]
    Timeout(std::time::Duration),
    /// The engine failed while generating (an executor error).
    #[error("{0}")]
    Generation(String),
    /// The tokenizer or the server itself failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Says in the log that the request failed, when the server is at fault (5xx): a client's
    /// mistake is answered, not logged.
    pub(crate) fn log(&self) {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(%status, error = %self, "request failed");
        }
    }

    /// An invalid value for `param`; the message reads "`param` {message}".
    pub fn invalid(param: impl Into<String>, message: impl std::fmt::Display) -> Self {
        let param = param.into();
        Self::Invalid {
            message: format!("`{param}` {message}"),
            param: Some(param),
        }
    }

    /// An unsupported feature asked for by `param`.
    pub fn unsupported(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unsupported {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Json(r) => match r.status() {
                s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
                _ => StatusCode::BAD_REQUEST,
            },
            Self::Invalid { .. } | Self::Unsupported { .. } | Self::ContextLength(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::ModelNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Overloaded(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Generation(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The journey contract's `reason` for a request that ended with this error.
    pub fn journey_reason(&self) -> &'static str {
        use wayfinder_trace::names::reason;
        match self {
            Self::Json(_)
            | Self::Invalid { .. }
            | Self::Unsupported { .. }
            | Self::ContextLength(_)
            | Self::BodyTooLarge { .. }
            | Self::HeadersTooLarge { .. }
            | Self::ModelNotFound(_)
            | Self::RouteNotFound(_)
            | Self::MethodNotAllowed(_)
            | Self::Unauthorized => reason::VALIDATION_ERROR,
            Self::Overloaded(_) => reason::OVERLOADED,
            Self::Unavailable(_) => reason::ENGINE_UNAVAILABLE,
            Self::Timeout(_) => reason::TIMEOUT,
            Self::Generation(_) => reason::GENERATION_ERROR,
            Self::Internal(_) => reason::INTERNAL_ERROR,
        }
    }

    /// The OpenAI error body.
    pub fn body(&self) -> ErrorBody {
        let (kind, param, code) = match self {
            Self::Json(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ("invalid_request_error", None, Some("payload_too_large"))
            }
            Self::Json(r) if r.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "invalid_request_error",
                None,
                Some("unsupported_media_type"),
            ),
            Self::Json(_) => ("invalid_request_error", None, Some("invalid_json")),
            Self::BodyTooLarge { .. } => ("invalid_request_error", None, Some("payload_too_large")),
            Self::HeadersTooLarge { .. } => {
                ("invalid_request_error", None, Some("headers_too_large"))
            }
            Self::Invalid { param, .. } => ("invalid_request_error", param.clone(), None),
            Self::Unsupported { param, .. } => (
                "invalid_request_error",
                Some(param.clone()),
                Some("unsupported"),
            ),
            Self::ContextLength(_) => (
                "invalid_request_error",
                Some("messages".to_owned()),
                Some("context_length_exceeded"),
            ),
            Self::ModelNotFound(_) => (
                "invalid_request_error",
                Some("model".to_owned()),
                Some("model_not_found"),
            ),
            Self::RouteNotFound(_) => ("invalid_request_error", None, Some("not_found")),
            Self::MethodNotAllowed(_) => {
                ("invalid_request_error", None, Some("method_not_allowed"))
            }
            Self::Unauthorized => ("invalid_request_error", None, Some("invalid_api_key")),
            Self::Overloaded(_) => ("rate_limit_error", None, Some("too_many_requests")),
            Self::Unavailable(_) => ("service_unavailable", None, None),
            Self::Timeout(_) => ("timeout_error", None, Some("request_timeout")),
            Self::Generation(_) | Self::Internal(_) => ("internal_error", None, None),
        };
        ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param,
                code,
            },
        }
    }
}

impl ApiError {
    /// `/health`'s answer, and any call's, once the engine has stopped.
    pub(crate) fn engine_not_running() -> Self {
        Self::Unavailable("the engine is not running".into())
    }

    /// The OpenAI `finish_reason` of a choice the engine finished with `status`, or the error
    /// the request fails with (`error`: the engine's message for a failed step).
    pub(crate) fn finish_reason(
        status: FinishStatus,
        error: Option<&str>,
    ) -> Result<&'static str, Self> {
        match status {
            FinishStatus::Stopped => Ok("stop"),
            FinishStatus::Length => Ok("length"),
            FinishStatus::Ignored => Err(Self::ContextLength(
                "the prompt does not fit in the model's context".into(),
            )),
            FinishStatus::Aborted => Err(Self::Unavailable(
                "the request was aborted (the server is shutting down)".into(),
            )),
            FinishStatus::Error => Err(Self::Generation(format!(
                "the engine failed: {}",
                error.unwrap_or("unknown error")
            ))),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotRunning => Self::engine_not_running(),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<TextError> for ApiError {
    /// The tokenizer failing on text it was given is the server's fault, not the client's.
    fn from(e: TextError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        Self::invalid(e.param, e.message)
    }
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The fields of an OpenAI error.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    /// What went wrong.
    pub message: String,
    /// The error class (`invalid_request_error`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The offending field, if one.
    pub param: Option<String>,
    /// A machine-readable code, if one.
    pub code: Option<&'static str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let mut response = (status, Json(self.body())).into_response();
        if let Self::Overloaded(_) = self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}
