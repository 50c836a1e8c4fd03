//! `GET /metrics`: the contract's metrics ("Metrics" in `JOURNEY_CONTRACT.md`) with the
//! `prometheus-client` crate, which writes OpenMetrics (exemplars included).
//!
//! - Per request, recorded once by [`crate::journey::Journey::end`] through
//!   [`Metrics::request_ended`]: the latency histograms (TTFT, end to end and queue time carry
//!   an exemplar with the `llm_request` span's `trace_id`/`span_id` when the request was
//!   sampled in), token counts, finish reasons, preemptions, and the OTel GenAI server
//!   histograms. Inter-token latency is observed as tokens arrive ([`Metrics::inter_token`]).
//! - At scrape time: the engine's gauges (running, waiting, KV usage) from the engine's stats —
//!   over the engine protocol when the engine runs in its own process — and the span
//!   exporter's counts.
//!
//! A scraper that asks for OpenMetrics (`Accept: application/openmetrics-text`) gets the
//! crate's output as is; any other gets the Prometheus text format (0.0.4): the same samples
//! without exemplars and `# EOF`, counters' `TYPE`/`HELP` named with their `_total` suffix.
//!
//! Counted on the API side from each engine request's end, preemptions of a request still
//! running show once it finishes, and so do its prefix-cache lookups (made when it was first
//! scheduled).

use std::borrow::Cow;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use wayfinder_core::EngineStats;
use wayfinder_trace::ExportStats;

/// Label pairs; every label set here is small.
type Labels = Vec<(String, String)>;
type Exemplary = HistogramWithExemplars<Labels>;

/// Seconds: 1 ms to ~9 min.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 20)
}

/// Seconds between tokens: 1 ms to ~16 s.
fn token_gap_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 15)
}

/// Tokens: 1 to ~1 M.
fn token_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 21)
}

fn exemplary() -> Exemplary {
    HistogramWithExemplars::new(latency_buckets())
}

fn per_token() -> Histogram {
    Histogram::new(token_gap_buckets())
}

/// What one request's end reports; see [`Metrics::request_ended`].
#[derive(Debug, Default)]
pub(crate) struct RequestRecord<'a> {
    /// `chat` or `text_completion`.
    pub(crate) operation: &'a str,
    /// The `llm_request` span's ids, when sampled in.
    pub(crate) trace: Option<(String, String)>,
    /// `None` for a success; else an `error.type` (the HTTP status, or `client_disconnect`).
    pub(crate) error_type: Option<String>,
    /// Arrival to departure.
    pub(crate) e2e: f64,
    /// Arrival to the first output, if any.
    pub(crate) ttft: Option<f64>,
    /// Set once the request reached the engine.
    pub(crate) engine: Option<EngineRecord<'a>>,
}

/// The engine's part of a request's end.
#[derive(Debug, Default)]
pub(crate) struct EngineRecord<'a> {
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    /// One per choice: `stop`, `length`, `abort` or `error`.
    pub(crate) finish_reasons: &'a [&'static str],
    pub(crate) preemptions: u64,
    /// Prompt tokens looked up in the prefix cache and found there, over the choices.
    pub(crate) prefix_cache_queries: usize,
    pub(crate) prefix_cache_hits: usize,
    pub(crate) queue: Option<f64>,
    pub(crate) prefill: Option<f64>,
    pub(crate) decode: Option<f64>,
}

/// Every metric of the contract, registered once per server.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    model: String,
    running: Gauge,
    waiting: Gauge,
    kv_usage: Gauge<f64, AtomicU64>,
    preemptions: Counter,
    prefix_cache_queries: Counter,
    prefix_cache_hits: Counter,
    prompt_tokens: Counter,
    generation_tokens: Counter,
    success: Family<Labels, Counter>,
    ttft: Exemplary,
    itl: Histogram,
    e2e: Exemplary,
    queue: Exemplary,
    prefill: Histogram,
    decode: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    spans: [Counter; 3],
    /// The exporter's counts at the last scrape (its counters are advanced by the difference).
    spans_seen: Mutex<[u64; 3]>,
    genai_duration: Family<Labels, Exemplary, fn() -> Exemplary>,
    genai_ttft: Family<Labels, Exemplary, fn() -> Exemplary>,
    genai_tpot: Family<Labels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// The metrics of a server serving `model`.
    pub(crate) fn new(model: &str) -> Self {
        let mut registry = Registry::with_labels(
            [(Cow::Borrowed("model_name"), Cow::Owned(model.to_owned()))].into_iter(),
        );
        let m = Self {
            registry: Registry::default(),
            model: model.to_owned(),
            running: Gauge::default(),
            waiting: Gauge::default(),
            kv_usage: Gauge::default(),
            preemptions: Counter::default(),
            prefix_cache_queries: Counter::default(),
            prefix_cache_hits: Counter::default(),
            prompt_tokens: Counter::default(),
            generation_tokens: Counter::default(),
            success: Family::default(),
            ttft: exemplary(),
            itl: per_token(),
            e2e: exemplary(),
            queue: exemplary(),
            prefill: Histogram::new(latency_buckets()),
            decode: Histogram::new(latency_buckets()),
            request_prompt_tokens: Histogram::new(token_buckets()),
            request_generation_tokens: Histogram::new(token_buckets()),
            spans: Default::default(),
            spans_seen: Mutex::new([0; 3]),
            genai_duration: Family::new_with_constructor(exemplary),
            genai_ttft: Family::new_with_constructor(exemplary),
            genai_tpot: Family::new_with_constructor(per_token),
        };
        m.register(&mut registry);
        Self { registry, ..m }
    }

    fn register(&self, r: &mut Registry) {
        let w = |name: &str| format!("wayfinder:{name}");
        r.register(
            w("num_requests_running"),
            "Requests in the running set",
            self.running.clone(),
        );
        r.register(
            w("num_requests_waiting"),
            "Requests waiting, preempted ones included",
            self.waiting.clone(),
        );
        r.register(
            w("kv_cache_usage_perc"),
            "KV blocks in use / all blocks (0..1)",
            self.kv_usage.clone(),
        );
        r.register(
            w("num_preemptions"),
            "Preemptions (counted when the request ends)",
            self.preemptions.clone(),
        );
        r.register(
            w("prompt_tokens"),
            "Prompt tokens of requests handed to the engine",
            self.prompt_tokens.clone(),
        );
        r.register(
            w("generation_tokens"),
            "Tokens generated",
            self.generation_tokens.clone(),
        );
        r.register(
            w("prefix_cache_queries"),
            "Prompt tokens looked up in the prefix cache",
            self.prefix_cache_queries.clone(),
        );
        r.register(
            w("prefix_cache_hits"),
            "Prompt tokens found in the prefix cache",
            self.prefix_cache_hits.clone(),
        );
        r.register(
            w("request_success"),
            "Finished requests by finished_reason",
            self.success.clone(),
        );
        r.register(
            w("time_to_first_token_seconds"),
            "Arrival to first token",
            self.ttft.clone(),
        );
        r.register(
            w("inter_token_latency_seconds"),
            "Between consecutive output tokens",
            self.itl.clone(),
        );
        r.register(
            w("e2e_request_latency_seconds"),
            "Arrival to departure",
            self.e2e.clone(),
        );
        r.register(
            w("request_queue_time_seconds"),
            "Waiting before the first schedule",
            self.queue.clone(),
        );
        r.register(
            w("request_prefill_time_seconds"),
            "First schedule to first token",
            self.prefill.clone(),
        );
        r.register(
            w("request_decode_time_seconds"),
            "First token to last token",
            self.decode.clone(),
        );
        r.register(
            w("request_prompt_tokens"),
            "Prompt tokens per request",
            self.request_prompt_tokens.clone(),
        );
        r.register(
            w("request_generation_tokens"),
            "Generated tokens per request",
            self.request_generation_tokens.clone(),
        );
        let [exported, dropped, failed] = self.spans.clone();
        r.register(
            w("journey_spans_exported"),
            "Spans the OTLP collector accepted",
            exported,
        );
        r.register(
            w("journey_spans_dropped"),
            "Spans ended but neither exported nor failed, beyond the export queue",
            dropped,
        );
        r.register(
            w("journey_spans_failed"),
            "Spans lost to failed exports",
            failed,
        );
        r.register(
            "gen_ai_server_request_duration_seconds",
            "GenAI server request duration",
            self.genai_duration.clone(),
        );
        r.register(
            "gen_ai_server_time_to_first_token_seconds",
            "GenAI server time to first token",
            self.genai_ttft.clone(),
        );
        r.register(
            "gen_ai_server_time_per_output_token_seconds",
            "GenAI server time per output token",
            self.genai_tpot.clone(),
        );
    }

    /// A gap of `seconds` between two output tokens of one choice.
    pub(crate) fn inter_token(&self, seconds: f64) {
        self.itl.observe(seconds);
    }

    /// Records a request's end (exactly once per request).
    pub(crate) fn request_ended(&self, r: &RequestRecord<'_>) {
        let exemplar = r.trace.as_ref().map(|(trace_id, span_id)| {
            vec![
                ("trace_id".to_owned(), trace_id.clone()),
                ("span_id".to_owned(), span_id.clone()),
            ]
        });
        let mut genai: Labels = vec![
            ("gen_ai_operation_name".into(), r.operation.to_owned()),
            ("gen_ai_provider_name".into(), "wayfinder".into()),
            ("gen_ai_request_model".into(), self.model.clone()),
            ("gen_ai_response_model".into(), self.model.clone()),
        ];
        if let Some(error) = &r.error_type {
            genai.push(("error_type".into(), error.clone()));
        }
        self.genai_duration
            .get_or_create(&genai)
            .observe(r.e2e, exemplar.clone(), None);
        let Some(e) = &r.engine else {
            return;
        };
        self.e2e.observe(r.e2e, exemplar.clone(), None);
        if let Some(ttft) = r.ttft {
            self.ttft.observe(ttft, exemplar.clone(), None);
            self.genai_ttft
                .get_or_create(&genai)
                .observe(ttft, exemplar.clone(), None);
            if e.completion_tokens > 1 {
                let per_token = (r.e2e - ttft).max(0.0) / (e.completion_tokens - 1) as f64;
                self.genai_tpot.get_or_create(&genai).observe(per_token);
            }
        }
        if let Some(q) = e.queue {
            self.queue.observe(q, exemplar, None);
        }
        for (h, v) in [(&self.prefill, e.prefill), (&self.decode, e.decode)] {
            if let Some(v) = v {
                h.observe(v);
            }
        }
        self.prompt_tokens.inc_by(e.prompt_tokens as u64);
        self.generation_tokens.inc_by(e.completion_tokens as u64);
        self.preemptions.inc_by(e.preemptions);
        self.prefix_cache_queries
            .inc_by(e.prefix_cache_queries as u64);
        self.prefix_cache_hits.inc_by(e.prefix_cache_hits as u64);
        self.request_prompt_tokens.observe(e.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(e.completion_tokens as f64);
        for reason in e.finish_reasons {
            self.success
                .get_or_create(&vec![("finished_reason".to_owned(), (*reason).to_owned())])
                .inc();
        }
    }

    /// The exposition, after taking the engine's and the exporter's figures; OpenMetrics
    /// when `openmetrics`, else the Prometheus text format.
    pub(crate) fn render(
        &self,
        engine: Option<&EngineStats>,
        spans: Option<(ExportStats, usize)>,
        openmetrics: bool,
    ) -> String {
        if let Some(s) = engine {
            self.running.set(s.num_running as i64);
            self.waiting.set(s.num_waiting as i64);
            let used = s.num_total_blocks.saturating_sub(s.num_free_blocks);
            self.kv_usage
                .set(used as f64 / s.num_total_blocks.max(1) as f64);
        }
        if let Some((stats, queue)) = spans {
            let now = [
                stats.exported,
                stats.unaccounted().saturating_sub(queue as u64),
                stats.failed,
            ];
            let mut seen = self.spans_seen.lock().unwrap_or_else(|e| e.into_inner());
            for ((counter, &now), seen) in self.spans.iter().zip(&now).zip(seen.iter_mut()) {
                counter.inc_by(now.saturating_sub(*seen));
                *seen = (*seen).max(now);
            }
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        if openmetrics {
            out
        } else {
            prometheus_text(&out)
        }
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: no exemplars, no `# EOF`,
/// and counters' `TYPE`/`HELP` under the name their samples carry (with `_total`).
fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# TYPE ", "# HELP "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line.split(" # {").next().unwrap_or(line)),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_drops_exemplars_and_eof_and_names_counters_as_sampled() {
        let om = "# HELP c Things.\n# TYPE c counter\nc_total{a=\"1\"} 3\n\
                  h_bucket{le=\"1.0\"} 2 # {trace_id=\"ab\"} 0.5\n# EOF\n";
        let text = prometheus_text(om);
        assert_eq!(
            text,
            "# HELP c_total Things.\n# TYPE c_total counter\nc_total{a=\"1\"} 3\n\
             h_bucket{le=\"1.0\"} 2\n"
        );
    }

    #[test]
    fn a_request_is_counted_with_its_exemplar() {
        let m = Metrics::new("m");
        m.request_ended(&RequestRecord {
            operation: "chat",
            trace: Some((
                "0af7651916cd43dd8448eb211c80319c".into(),
                "b7ad6b7169203331".into(),
            )),
            e2e: 0.5,
            ttft: Some(0.1),
            engine: Some(EngineRecord {
                prompt_tokens: 7,
                completion_tokens: 3,
                finish_reasons: &["stop"],
                preemptions: 1,
                queue: Some(0.01),
                ..EngineRecord::default()
            }),
            ..RequestRecord::default()
        });
        let om = m.render(None, None, true);
        assert!(
            om.contains("wayfinder:generation_tokens_total{model_name=\"m\"} 3"),
            "{om}"
        );
        assert!(
            om.contains(
                "wayfinder:request_success_total{model_name=\"m\",finished_reason=\"stop\"} 1"
            ),
            "{om}"
        );
        assert!(
            om.contains("trace_id=\"0af7651916cd43dd8448eb211c80319c\""),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
        let text = m.render(None, None, false);
        assert!(
            !text.contains("trace_id") && !text.contains("# EOF"),
            "{text}"
        );
    }
}
