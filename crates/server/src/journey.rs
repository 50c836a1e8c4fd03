//! The journey of one API request: arrival, hand-off to the engine core, first output, and
//! its end — and, when journey tracing samples the request in, its `llm_request` span
//! (`wayfinder_trace::RequestSpan`).
//!
//! A [`Journey`] is the one owner of a request's end. It is made as the request arrives, before
//! its body is parsed; the code serving the request tells it facts (validated, handed off, a
//! token, a choice finished, the engine's timestamps), and [`Journey::end`] — called with the
//! [`Outcome`] where the response is complete or fails, or by `Drop` when the request's future
//! or body stream goes away (a client disconnect) — decides once how the request ended and
//! tells the span (and, later, the metrics and the history) exactly once. So every path —
//! invalid JSON, validation errors, overload, an engine that is down, a failed generation, a
//! client that disconnects — ends with exactly one `api.DEPARTED` or `api.ABORTED`. With
//! tracing off, or the request sampled out, it holds no span and costs a few words.

use axum::http::HeaderMap;
use wayfinder_core::clock::monotonic_now;
use wayfinder_core::{Carrier, FinishedOutput};
use wayfinder_trace::names::reason;
use wayfinder_trace::{Latency, RequestParams, RequestSpan, TraceId, Usage};

use std::sync::Arc;

use crate::endpoints::Endpoint;
use crate::error::ApiError;
use crate::history::{History, Record};
use crate::metrics::{EngineRecord, Metrics, RequestRecord};
use crate::state::AppState;
use crate::validation::ValidRequest;
use crate::wire::{PromptTokensDetails, UsageOut};

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

/// How a request ended; see [`Journey::end`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome<'a> {
    /// The response was completely written.
    Departed,
    /// The request failed with this error (whatever was sent of the response).
    Failed(&'a ApiError),
    /// The client went away before the response was complete.
    Disconnected,
}

/// One API request's milestones and, when traced, its span.
#[derive(Debug)]
pub(crate) struct Journey {
    id: String,
    /// Monotonic seconds (the engine's clock).
    arrival: f64,
    first_output: Option<f64>,
    engine: EngineTimes,
    /// What the engine answered so far; set once the request is handed off.
    answer: Option<Answer>,
    /// Set by [`Journey::end`], the one place that ends a request.
    ended: bool,
    /// The span's trace id, kept for log lines written after the span ended.
    log: RequestLog,
    span: Option<RequestSpan>,
    /// Where the request's end is counted.
    metrics: Arc<Metrics>,
    /// Its record for the journey history, when the history is on.
    record: Option<(Arc<History>, Record)>,
    /// `gen_ai.operation.name` of its endpoint.
    operation: &'static str,
}

/// The answer's counts and finish reasons, kept as the request runs.
#[derive(Debug)]
struct Answer {
    model: String,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// One per choice, in the order the request's choices were handed off.
    finish_reasons: Vec<Option<&'static str>>,
    /// When each choice's latest token came (for inter-token latency).
    last_token: Vec<Option<f64>>,
    /// Preemptions over the choices that finished in the engine.
    preemptions: u64,
    /// Choices per prompt (a request's choices come prompt by prompt).
    per_prompt: usize,
    /// Each choice's prompt tokens found in the prefix cache.
    cached: Vec<usize>,
    /// Prompt tokens looked up in the prefix cache, over the choices.
    cache_queries: usize,
}

impl Answer {
    /// Prompt tokens read from the prefix cache, each distinct prompt once (the most any of
    /// its choices found), as `usage` reports them.
    fn cached_once(&self) -> usize {
        self.cached
            .chunks(self.per_prompt.max(1))
            .map(|c| c.iter().copied().max().unwrap_or(0))
            .sum()
    }
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
    /// A request `id` to `endpoint` arrived at `arrival` with `headers`.
    pub(crate) fn arrived(
        state: &AppState,
        headers: &HeaderMap,
        id: String,
        arrival: f64,
        endpoint: Endpoint,
    ) -> Self {
        let span = match state.tracing() {
            Some(t) => t.start_request(headers, &id, endpoint.operation),
            None => {
                if headers.contains_key("traceparent") {
                    state.warn_untraced_traceparent();
                }
                None
            }
        };
        tracing::debug!(request_id = %id, "api.arrived");
        let history = state.history();
        let record = history.is_on().then(|| {
            let trace_id = span.as_ref().map(|s| s.trace_id().to_string());
            let record = Record::arrived(&id, endpoint.operation, trace_id);
            history.arrived(record.clone());
            (Arc::clone(history), record)
        });
        Self {
            id,
            arrival,
            first_output: None,
            engine: EngineTimes::default(),
            answer: None,
            ended: false,
            log: RequestLog(span.as_ref().map(RequestSpan::trace_id)),
            span,
            metrics: Arc::clone(state.metrics()),
            operation: endpoint.operation,
            record,
        }
    }

    /// Seconds since the request arrived.
    pub(crate) fn elapsed(&self) -> f64 {
        (monotonic_now() - self.arrival).max(0.0)
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The `traceresponse` header's value, when the request is traced.
    pub(crate) fn trace_response(&self) -> Option<String> {
        self.span.as_ref().map(RequestSpan::trace_response)
    }

    /// Where the log lines written while serving this request go; see [`RequestLog`].
    pub(crate) fn log(&self) -> RequestLog {
        self.log
    }

    /// Records the parameters in force.
    pub(crate) fn validated(&mut self, valid: &ValidRequest) {
        let Some(span) = &mut self.span else {
            return;
        };
        let first = valid.choices.first().map(|c| &c.request);
        span.set_params(&RequestParams {
            model: valid.model.clone(),
            temperature: valid.temperature,
            top_p: valid.top_p,
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

    /// The request's `choices` engine requests for `model`, `per_prompt` of them for each
    /// prompt, with `prompt_tokens` in all (each distinct prompt once), were handed to the
    /// engine core.
    pub(crate) fn handed_off(
        &mut self,
        model: &str,
        prompt_tokens: usize,
        choices: usize,
        per_prompt: usize,
    ) {
        tracing::debug!(request_id = %self.id, "api.handed_off");
        self.answer = Some(Answer {
            model: model.to_owned(),
            prompt_tokens,
            completion_tokens: 0,
            finish_reasons: vec![None; choices],
            last_token: vec![None; choices],
            preemptions: 0,
            per_prompt,
            cached: vec![0; choices],
            cache_queries: 0,
        });
        if let Some(s) = &mut self.span {
            s.handed_off();
        }
        let t = self.elapsed();
        self.note(move |r| {
            r.prompt_tokens = prompt_tokens;
            r.event("handed_off", t, None);
        });
    }

    /// Applies `f` to the history record, and to its in-flight copy.
    fn note(&mut self, f: impl Fn(&mut Record)) {
        if let Some((history, record)) = &mut self.record {
            f(record);
            history.update(&self.id, f);
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
        let t = now - self.arrival;
        self.note(move |r| {
            r.ttft_s = Some(t);
            r.event("first_output", t, None);
        });
    }

    /// Choice `i` (in hand-off order) produced a token.
    pub(crate) fn token(&mut self, i: usize) {
        if let Some(a) = &mut self.answer {
            a.completion_tokens += 1;
            if let Some(last) = a.last_token.get_mut(i) {
                let now = monotonic_now();
                if let Some(before) = last.replace(now) {
                    self.metrics.inter_token(now - before);
                }
            }
        }
    }

    /// Choice `i` (in hand-off order) ended with `reason` (`stop` or `length`).
    pub(crate) fn choice_finished(&mut self, i: usize, reason: &'static str) {
        if let Some(slot) = self
            .answer
            .as_mut()
            .and_then(|a| a.finish_reasons.get_mut(i))
        {
            *slot = Some(reason);
        }
    }

    /// Token counts so far.
    pub(crate) fn usage(&self) -> UsageOut {
        let (prompt_tokens, completion_tokens, cached_tokens) =
            self.answer.as_ref().map_or((0, 0, 0), |a| {
                (a.prompt_tokens, a.completion_tokens, a.cached_once())
            });
        UsageOut {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }

    /// Choice `i`'s engine request finished: its timestamps, preemptions and journey marks.
    pub(crate) fn engine_finished(&mut self, i: usize, f: &FinishedOutput) {
        if let Some(a) = &mut self.answer {
            a.preemptions += u64::from(f.num_preemptions);
            if let Some(c) = a.cached.get_mut(i) {
                *c = f.usage.cached_tokens;
            }
            a.cache_queries += f.prefix_cache_queries;
        }
        if let Some((_, record)) = &mut self.record {
            record.engine_marks(i, &f.journey, self.arrival);
        }
        let t = &f.timestamps;
        let e = &mut self.engine;
        e.queued = min(e.queued, Some(t.queued));
        e.first_scheduled = min(e.first_scheduled, t.first_scheduled);
        e.first_token = min(e.first_token, t.first_token);
        e.last_token = max(e.last_token, t.last_token);
    }

    /// Passes `result` through, ending the journey with its error.
    pub(crate) fn check<T>(&mut self, result: Result<T, ApiError>) -> Result<T, ApiError> {
        if let Err(e) = &result {
            self.end(Outcome::Failed(e));
        }
        result
    }

    /// The request ended so: the one place that says how. The first call counts; the span
    /// gets the answer's counts, finish reasons and latency breakdown (when the request was
    /// handed off), then exactly one `api.DEPARTED` or `api.ABORTED`, and ends.
    pub(crate) fn end(&mut self, outcome: Outcome<'_>) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let now = monotonic_now();
        // Why it was aborted: `reason`, `error.type` and the message; `None` for a departure.
        let aborted = match outcome {
            Outcome::Departed => None,
            Outcome::Failed(e) => Some((
                e.journey_reason(),
                e.status().as_str().to_owned(),
                e.to_string(),
            )),
            Outcome::Disconnected => Some((
                reason::CLIENT_DISCONNECT,
                "client_disconnect".to_owned(),
                "the client disconnected before the response was complete".to_owned(),
            )),
        };
        match &aborted {
            None => {
                tracing::debug!(request_id = %self.id, after_s = now - self.arrival, "api.departed")
            }
            Some((why, _, message)) => {
                tracing::debug!(request_id = %self.id, reason = why, error = %message, "api.aborted");
            }
        }
        self.count(outcome, now);
        self.file(outcome, now);
        let Some(mut span) = self.span.take() else {
            return;
        };
        if let Some(a) = &self.answer {
            span.set_usage(&Usage {
                prompt_tokens: a.prompt_tokens,
                completion_tokens: a.completion_tokens,
                // The contract sums it over the choices.
                cached_prompt_tokens: a.cached.iter().sum(),
            });
            let reasons: Vec<&'static str> = a
                .finish_reasons
                .iter()
                .map(|r| r.unwrap_or("abort"))
                .collect();
            span.set_response(&a.model, &self.id, &reasons);
            let e = self.engine;
            span.set_latency(&Latency {
                time_in_queue: span_of(e.queued, e.first_scheduled),
                time_to_first_token: span_of(Some(self.arrival), self.first_output),
                e2e: span_of(Some(self.arrival), Some(now)),
                prefill: span_of(e.first_scheduled, e.first_token),
                decode: span_of(e.first_token, e.last_token),
            });
        }
        match aborted {
            None => span.departed(),
            Some((why, error_type, message)) => span.aborted(why, &error_type, &message),
        }
    }
}

impl Journey {
    /// Files the request's record in the history (once, from [`Journey::end`]).
    fn file(&mut self, outcome: Outcome<'_>, now: f64) {
        let Some((history, mut r)) = self.record.take() else {
            return;
        };
        let t = now - self.arrival;
        let (status, name, detail) = match outcome {
            Outcome::Departed => ("departed", "departed", None),
            Outcome::Failed(e) => ("failed", "aborted", Some(e.journey_reason().to_owned())),
            Outcome::Disconnected => (
                "disconnected",
                "aborted",
                Some(reason::CLIENT_DISCONNECT.to_owned()),
            ),
        };
        r.status = status;
        if let Outcome::Failed(e) = outcome {
            r.error = Some(e.to_string());
        }
        r.event(name, t, detail);
        r.e2e_s = Some(t);
        let e = self.engine;
        r.queue_s = span_of(e.queued, e.first_scheduled);
        if let Some(a) = &self.answer {
            r.completion_tokens = a.completion_tokens;
            r.cached_tokens = a.cached_once();
            r.preemptions = a.preemptions;
            r.finish_reasons = a
                .finish_reasons
                .iter()
                .map(|x| x.unwrap_or("abort"))
                .collect();
        }
        r.events.sort_by(|a, b| a.t.total_cmp(&b.t));
        history.ended(r);
    }

    /// Counts the request's end in the metrics (once, from [`Journey::end`]).
    fn count(&self, outcome: Outcome<'_>, now: f64) {
        let (error_type, unfinished) = match outcome {
            Outcome::Departed => (None, "abort"),
            Outcome::Failed(e) => (Some(e.status().as_str().to_owned()), "error"),
            Outcome::Disconnected => (Some("client_disconnect".to_owned()), "abort"),
        };
        let reasons: Vec<&'static str> = self.answer.as_ref().map_or_else(Vec::new, |a| {
            a.finish_reasons
                .iter()
                .map(|r| r.unwrap_or(unfinished))
                .collect()
        });
        let e = self.engine;
        let engine = self.answer.as_ref().map(|a| EngineRecord {
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
            finish_reasons: &reasons,
            preemptions: a.preemptions,
            prefix_cache_queries: a.cache_queries,
            prefix_cache_hits: a.cached.iter().sum(),
            queue: span_of(e.queued, e.first_scheduled),
            prefill: span_of(e.first_scheduled, e.first_token),
            decode: span_of(e.first_token, e.last_token),
        });
        self.metrics.request_ended(&RequestRecord {
            operation: self.operation,
            trace: self
                .span
                .as_ref()
                .map(|s| (s.trace_id().to_string(), s.span_id_hex())),
            error_type,
            e2e: (now - self.arrival).max(0.0),
            ttft: span_of(Some(self.arrival), self.first_output),
            engine,
        });
    }
}

impl Drop for Journey {
    fn drop(&mut self) {
        // Dropped without an outcome: the handler future or the body stream went away,
        // which is what a client disconnect looks like.
        self.end(Outcome::Disconnected);
    }
}
