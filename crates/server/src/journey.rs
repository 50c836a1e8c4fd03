//! The journey of one API request: arrival, hand-off to the engine core, first output, and
//! departure or abort — and, when journey tracing samples the request in, its `llm_request`
//! span (`wayfinder_trace::RequestSpan`).
//!
//! A [`Journey`] is made as the request arrives, before its body is parsed, so that every path
//! — invalid JSON, validation errors, overload, an engine that is down, a failed generation,
//! a client that disconnects — ends with exactly one `api.DEPARTED` or `api.ABORTED`. With
//! tracing off, or the request sampled out, it holds no span and costs a few words.

use axum::http::HeaderMap;
use wayfinder_core::clock::monotonic_now;
use wayfinder_core::{Carrier, RequestTimestamps};
use wayfinder_trace::names::reason;
use wayfinder_trace::{Latency, RequestParams, RequestSpan, TraceId};

use crate::error::ApiError;
use crate::state::AppState;
use crate::validation::ValidRequest;
use crate::wire::UsageOut;

/// `gen_ai.operation.name` of the chat endpoint.
pub(crate) const CHAT: &str = "chat";
/// `gen_ai.operation.name` of the completions endpoint.
pub(crate) const TEXT_COMPLETION: &str = "text_completion";

/// The generation endpoint at `path`: its operation name and response-id prefix.
pub(crate) fn endpoint(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/v1/chat/completions" => Some((CHAT, "chatcmpl")),
        "/v1/completions" => Some((TEXT_COMPLETION, "cmpl")),
        _ => None,
    }
}

/// The `tracing` span that the log lines of a traced request sit in, so that they carry its
/// request and trace ids (nothing for an untraced request).
///
/// Making the span and entering it on every poll of the request's future cost a traced
/// request ~1 µs of CPU in a server logging at INFO (`perf` on the tracing benchmark: the
/// subscriber's span bookkeeping), where nothing inside the future logs: its own lines are DEBUG, and the one line above that, a failure, is written where
/// the handler's error becomes the response. So the future runs in the span only when a
/// level below INFO is enabled ([`RequestLog::for_future`]), and a failure's line is written
/// inside the span by the code that writes it ([`RequestLog::span`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestLog(Option<TraceId>);

impl RequestLog {
    /// The span of request `id`, made now (none for an untraced request).
    pub(crate) fn span(&self, id: &str) -> tracing::Span {
        match &self.0 {
            Some(trace_id) => {
                tracing::info_span!("request", request_id = %id, trace_id = %trace_id)
            }
            None => tracing::Span::none(),
        }
    }

    /// The span for the future of request `id`: [`Self::span`] when log lines below INFO may
    /// be written (anywhere: the most verbose level of any filter), else none.
    pub(crate) fn for_future(&self, id: &str) -> tracing::Span {
        if tracing::level_filters::LevelFilter::current()
            > tracing::level_filters::LevelFilter::INFO
        {
            self.span(id)
        } else {
            tracing::Span::none()
        }
    }
}

/// One API request's milestones and, when traced, its span.
#[derive(Debug)]
pub(crate) struct Journey {
    id: String,
    /// Monotonic seconds (the engine's clock).
    arrival: f64,
    first_output: Option<f64>,
    /// When the response was completely written.
    departed_at: Option<f64>,
    engine: EngineTimes,
    ended: bool,
    span: Option<RequestSpan>,
}

/// The engine's timestamps, over all of a request's choices.
#[derive(Debug, Default, Clone, Copy)]
struct EngineTimes {
    queued: Option<f64>,
    first_scheduled: Option<f64>,
    first_token: Option<f64>,
    last_token: Option<f64>,
}

fn min(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// `later - earlier` when both happened and it is positive.
fn span_of(earlier: Option<f64>, later: Option<f64>) -> Option<f64> {
    Some(later? - earlier?).filter(|d| *d > 0.0)
}

impl Journey {
    /// A request `id` to the `operation` endpoint arrived at `arrival` with `headers`.
    pub(crate) fn arrived(
        state: &AppState,
        headers: &HeaderMap,
        id: String,
        arrival: f64,
        operation: &'static str,
    ) -> Self {
        let span = match state.tracing() {
            Some(t) => t.start_request(headers, &id, operation),
            None => {
                if headers.contains_key("traceparent") {
                    state.warn_untraced_traceparent();
                }
                None
            }
        };
        tracing::debug!(request_id = %id, "api.arrived");
        Self {
            id,
            arrival,
            first_output: None,
            departed_at: None,
            engine: EngineTimes::default(),
            ended: false,
            span,
        }
    }

    /// Seconds since the request arrived.
    pub(crate) fn elapsed(&self) -> f64 {
        (monotonic_now() - self.arrival).max(0.0)
    }

    /// Whether the request is traced (it has an `llm_request` span).
    pub(crate) fn is_traced(&self) -> bool {
        self.span.is_some()
    }

    /// Moves the journey out, leaving an ended one without a span in its place.
    pub(crate) fn take(&mut self) -> Journey {
        let placeholder = Journey {
            id: self.id.clone(),
            arrival: self.arrival,
            first_output: self.first_output,
            departed_at: self.departed_at,
            engine: self.engine,
            ended: true,
            span: None,
        };
        std::mem::replace(self, placeholder)
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// Where the log lines written while serving this request go; see [`RequestLog`].
    pub(crate) fn log(&self) -> RequestLog {
        RequestLog(self.span.as_ref().map(RequestSpan::trace_id))
    }

    /// Records the parameters in force.
    pub(crate) fn validated(&mut self, valid: &ValidRequest) {
        let Some(span) = &mut self.span else {
            return;
        };
        let first = valid.choices.first().map(|c| &c.request);
        span.set_params(&RequestParams {
            model: valid.model.clone(),
            temperature: first.map_or(0.0, |r| f64::from(r.sampling().temperature)),
            top_p: first.map_or(1.0, |r| f64::from(r.sampling().top_p)),
            max_tokens: first.map_or(0, |r| i64::from(r.stop().max_tokens)),
            n: valid.n as i64,
            stream: valid.stream,
            seed: valid.seed,
        });
    }

    /// The carrier for the engine requests, when traced.
    pub(crate) fn carrier(&self) -> Option<Carrier> {
        self.span.as_ref().map(RequestSpan::carrier)
    }

    /// The request was handed to the engine core.
    pub(crate) fn handed_off(&mut self) {
        tracing::debug!(request_id = %self.id, "api.handed_off");
        if let Some(s) = &mut self.span {
            s.handed_off();
        }
    }

    /// Output came back from the engine core (only the first call counts).
    pub(crate) fn first_output(&mut self) {
        if self.first_output.is_some() {
            return;
        }
        let now = monotonic_now();
        self.first_output = Some(now);
        tracing::debug!(request_id = %self.id, after_s = now - self.arrival, "api.first_output");
        if let Some(s) = &mut self.span {
            s.first_response();
        }
    }

    /// One of the request's engine requests finished with these timestamps.
    pub(crate) fn engine_finished(&mut self, t: &RequestTimestamps) {
        let e = &mut self.engine;
        e.queued = min(e.queued, Some(t.queued));
        e.first_scheduled = min(e.first_scheduled, t.first_scheduled);
        e.first_token = min(e.first_token, t.first_token);
        e.last_token = max(e.last_token, t.last_token);
    }

    /// Records the token counts, the answer's finish reasons and the latency breakdown.
    pub(crate) fn record(
        &mut self,
        model: &str,
        usage: &UsageOut,
        finish_reasons: &[&'static str],
    ) {
        let Some(span) = &mut self.span else {
            return;
        };
        span.set_usage(usage.prompt_tokens, usage.completion_tokens);
        span.set_response(model, &self.id, finish_reasons);
        let e = self.engine;
        span.set_latency(&Latency {
            time_in_queue: span_of(e.queued, e.first_scheduled),
            time_to_first_token: span_of(Some(self.arrival), self.first_output),
            e2e: span_of(
                Some(self.arrival),
                Some(self.departed_at.unwrap_or_else(monotonic_now)),
            ),
            prefill: span_of(e.first_scheduled, e.first_token),
            decode: span_of(e.first_token, e.last_token),
        });
    }

    /// The response was completely written.
    pub(crate) fn departed(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = monotonic_now();
        self.departed_at = Some(now);
        tracing::debug!(request_id = %self.id, after_s = now - self.arrival, "api.departed");
        if let Some(s) = &mut self.span {
            s.departed();
        }
    }

    /// Passes `result` through, recording its error as the journey's end.
    pub(crate) fn check<T>(&mut self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    /// Whether the request departed or failed.
    pub(crate) fn is_ended(&self) -> bool {
        self.ended
    }

    /// The request ended with `error`.
    pub(crate) fn failed(&mut self, error: &ApiError) {
        self.abort(
            error.journey_reason(),
            error.status().as_str(),
            &error.to_string(),
        );
    }

    fn abort(&mut self, why: &'static str, error_type: &str, message: &str) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        tracing::debug!(request_id = %self.id, reason = why, error = message, "api.aborted");
        if let Some(s) = &mut self.span {
            s.aborted(why, error_type, message);
        }
    }
}

impl Drop for Journey {
    fn drop(&mut self) {
        // Dropped without an outcome: the handler future or the body stream went away,
        // which is what a client disconnect looks like.
        self.abort(
            reason::CLIENT_DISCONNECT,
            "client_disconnect",
            "the client disconnected before the response was complete",
        );
    }
}
