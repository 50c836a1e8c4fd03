//! `llm_request`: the API layer's span of one HTTP request, from arrival (before parsing) to
//! departure or abort, with the contract's events and attributes.
//!
//! [`Telemetry::start_request`] makes the sampling decision: a request with a valid parent in
//! its headers follows the parent's sampled flag, any other is sampled at the configured rate.
//! A sampled-out request gets `None` and costs nothing more. A [`RequestSpan`] ends by being
//! consumed, with exactly one of `api.DEPARTED` ([`RequestSpan::departed`]) or `api.ABORTED`
//! ([`RequestSpan::aborted`]). Which one, and that the milestones are recorded once each, is
//! decided by the server's one owner of a request's end (its `Journey`), not here.

use std::sync::Arc;

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, TraceId, Tracer};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::Span;
use wayfinder_core::Carrier;
use wayfinder_core::clock::monotonic_now;

use crate::carrier;
use crate::names::{PROVIDER, SPAN_REQUEST, api_event, attr};
use crate::provider::{Telemetry, WallClock};

/// The request's parameters as they are in force (after defaults), for the span's attributes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestParams {
    /// The model asked for.
    pub model: String,
    /// Temperature (0 is recorded too).
    pub temperature: f64,
    /// Top-p.
    pub top_p: f64,
    /// The output limit in force.
    pub max_tokens: i64,
    /// Choices per prompt.
    pub n: i64,
    /// Streaming.
    pub stream: bool,
    /// The seed, when the client gave one.
    pub seed: Option<i64>,
}

/// A request's token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens, over all choices.
    pub completion_tokens: usize,
    /// Prompt tokens served from the prefix cache, over all choices (0 when none).
    pub cached_prompt_tokens: usize,
}

/// Where the request's time went, in seconds; `None` for a phase that did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Latency {
    /// From engine acceptance to first scheduling.
    pub time_in_queue: Option<f64>,
    /// From arrival to the first token.
    pub time_to_first_token: Option<f64>,
    /// From arrival to departure.
    pub e2e: Option<f64>,
    /// From first scheduling to the first token.
    pub prefill: Option<f64>,
    /// From the first token to the last.
    pub decode: Option<f64>,
}

/// The `llm_request` span of one sampled request.
#[derive(Debug)]
pub struct RequestSpan {
    span: Span,
    /// Shared by the `gen_ai.request.id` and `gen_ai.response.id` attributes.
    request_id: Arc<str>,
    clock: WallClock,
}

impl Telemetry {
    /// Starts `llm_request` for a request that just arrived with `headers`, or returns `None`
    /// when the request is sampled out. `operation` is `chat` or `text_completion`.
    pub fn start_request(
        &self,
        headers: &http::HeaderMap,
        request_id: &str,
        operation: &'static str,
    ) -> Option<RequestSpan> {
        let now = monotonic_now();
        let has_headers = carrier::has_trace_headers(headers);
        let parent = if has_headers {
            carrier::extract_headers(headers)
        } else {
            None
        };
        tracing::debug!(
            request_id,
            parent_context = parent.is_some(),
            "journey tracing: context extracted"
        );
        let sampled = match &parent {
            Some(p) => p.is_sampled(),
            None => sample(self.config().sample_rate),
        };
        if !sampled {
            return None;
        }
        let cx = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
        let clock = self.clock();
        let tracer = self.api_tracer();
        let request_id: Arc<str> = request_id.into();
        let mut span = tracer
            .span_builder(SPAN_REQUEST)
            .with_kind(SpanKind::Server)
            .with_start_time(clock.wall(now))
            .with_attributes(initial_attributes(&request_id, operation))
            .start_with_context(tracer, &cx);
        tracing::debug!(
            request_id = &*request_id,
            has_trace_headers = has_headers,
            trace_id = %span.span_context().trace_id(),
            "journey tracing: llm_request span made"
        );
        span.add_event_with_timestamp(
            api_event::ARRIVED,
            clock.wall(now),
            vec![KeyValue::new(attr::EVENT_TS_MONOTONIC, now)],
        );
        Some(RequestSpan {
            span,
            request_id,
            clock,
        })
    }
}

/// Attributes `llm_request` has at most: 3 at arrival, 7 parameters, 5 usage, 3 response, 6
/// latency and `error.type` (25), with room for one more.
const MAX_REQUEST_ATTRIBUTES: usize = 26;

/// The attributes known at arrival, in a vector with room for all the others, so that the
/// span's attribute list never grows by reallocation (the SDK keeps the builder's vector).
fn initial_attributes(request_id: &Arc<str>, operation: &'static str) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(MAX_REQUEST_ATTRIBUTES);
    attrs.extend([
        KeyValue::new(attr::REQUEST_ID, request_id.clone()),
        KeyValue::new(attr::OPERATION_NAME, operation),
        KeyValue::new(attr::PROVIDER_NAME, PROVIDER),
    ]);
    attrs
}

/// A Bernoulli draw at `rate`.
fn sample(rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
}

impl RequestSpan {
    /// The trace id (its `Display` is the hex form log lines carry).
    pub fn trace_id(&self) -> TraceId {
        self.span.span_context().trace_id()
    }

    /// The span id, as 16 hex digits.
    pub fn span_id_hex(&self) -> String {
        self.span.span_context().span_id().to_string()
    }

    /// The `traceresponse` header's value (W3C Trace Context Level 2) naming this span:
    /// `00-<trace id>-<span id>-<flags>`.
    pub fn trace_response(&self) -> String {
        let sc = self.span.span_context();
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    }

    /// The carrier for the engine request: this span's context and the sampling decision.
    pub fn carrier(&self) -> Carrier {
        let carrier = carrier::inject(self.span.span_context(), &self.request_id);
        tracing::debug!(
            traceparent = carrier.get("traceparent").map_or("", String::as_str),
            "journey tracing: context injected"
        );
        carrier
    }

    /// Records the request's parameters.
    pub fn set_params(&mut self, p: &RequestParams) {
        let mut attrs = vec![
            KeyValue::new(attr::REQUEST_MODEL, p.model.clone()),
            KeyValue::new(attr::TEMPERATURE, p.temperature),
            KeyValue::new(attr::TOP_P, p.top_p),
            KeyValue::new(attr::MAX_TOKENS, p.max_tokens),
            KeyValue::new(attr::N, p.n),
            KeyValue::new(attr::STREAM, p.stream),
        ];
        if let Some(seed) = p.seed {
            attrs.push(KeyValue::new(attr::SEED, seed));
        }
        self.span.set_attributes(attrs);
    }

    /// `api.HANDOFF_TO_CORE`.
    pub fn handed_off(&mut self) {
        self.event(api_event::HANDOFF_TO_CORE, Vec::new());
    }

    /// `api.FIRST_RESPONSE_FROM_CORE`.
    pub fn first_response(&mut self) {
        self.event(api_event::FIRST_RESPONSE_FROM_CORE, Vec::new());
    }

    /// Records the token counts (completion and cached: the sums over all choices).
    pub fn set_usage(&mut self, usage: &Usage) {
        let (p, c) = (usage.prompt_tokens as i64, usage.completion_tokens as i64);
        self.span.set_attributes([
            KeyValue::new(attr::PROMPT_TOKENS, p),
            KeyValue::new(attr::COMPLETION_TOKENS, c),
            KeyValue::new(attr::INPUT_TOKENS, p),
            KeyValue::new(attr::OUTPUT_TOKENS, c),
            KeyValue::new(
                attr::CACHE_READ_INPUT_TOKENS,
                usage.cached_prompt_tokens as i64,
            ),
        ]);
    }

    /// Records who answered: the model, the response id and each choice's finish reason.
    pub fn set_response(&mut self, model: &str, id: &str, finish_reasons: &[&'static str]) {
        let reasons: Vec<StringValue> = finish_reasons.iter().map(|r| (*r).into()).collect();
        // The response id is the request id (one string for both) unless told otherwise.
        let id: Value = if id == &*self.request_id {
            self.request_id.clone().into()
        } else {
            id.to_owned().into()
        };
        self.span.set_attributes([
            KeyValue::new(attr::RESPONSE_MODEL, model.to_owned()),
            KeyValue::new(attr::RESPONSE_ID, id),
            KeyValue::new(attr::FINISH_REASONS, Value::Array(Array::String(reasons))),
        ]);
    }

    /// Records the latency breakdown; phases that did not happen are left out.
    pub fn set_latency(&mut self, l: &Latency) {
        let inference = match (l.prefill, l.decode) {
            (Some(p), Some(d)) => Some(p + d),
            (Some(p), None) => Some(p),
            _ => None,
        };
        let values = [
            (attr::TIME_IN_QUEUE, l.time_in_queue),
            (attr::TIME_TO_FIRST_TOKEN, l.time_to_first_token),
            (attr::E2E, l.e2e),
            (attr::TIME_IN_MODEL_PREFILL, l.prefill),
            (attr::TIME_IN_MODEL_DECODE, l.decode),
            (attr::TIME_IN_MODEL_INFERENCE, inference),
        ];
        self.span.set_attributes(
            values
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| KeyValue::new(k, v))),
        );
    }

    /// `api.DEPARTED`: the response was completely sent. Ends the span.
    pub fn departed(mut self) {
        self.event(api_event::DEPARTED, Vec::new());
        self.end();
    }

    /// `api.ABORTED` with `reason` (one of [`crate::names::reason`]'s values) and the error;
    /// the span's status becomes ERROR with `error.type`. Ends the span.
    pub fn aborted(mut self, why: &'static str, error_type: &str, message: &str) {
        self.event(
            api_event::ABORTED,
            vec![
                KeyValue::new(attr::REASON, why),
                KeyValue::new(attr::ERROR, message.to_owned()),
            ],
        );
        self.span
            .set_attribute(KeyValue::new(attr::ERROR_TYPE, error_type.to_owned()));
        self.span.set_status(Status::error(message.to_owned()));
        self.end();
    }

    fn end(mut self) {
        self.span
            .end_with_timestamp(self.clock.wall(monotonic_now()));
    }

    fn event(&mut self, name: &'static str, mut attrs: Vec<KeyValue>) {
        let now = monotonic_now();
        attrs.push(KeyValue::new(attr::EVENT_TS_MONOTONIC, now));
        self.span
            .add_event_with_timestamp(name, self.clock.wall(now), attrs);
    }
}
