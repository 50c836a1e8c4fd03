//! [`AppState`]: what every handler shares — the engine handle, the text tools, the served
//! model's name and limits, and the in-flight budget behind backpressure.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wayfinder_core::EngineHandle;
use wayfinder_core::SamplingParams;
use wayfinder_ipc::Secret;
use wayfinder_text::ChatTemplate;
use wayfinder_text::Tokenizer;
use wayfinder_trace::Telemetry;

use crate::error::ApiError;
use crate::history::History;
use crate::metrics::Metrics;

/// Request and server limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// The engine's `max_num_seqs`: requests it runs at once.
    pub max_num_seqs: usize,
    /// Engine requests allowed to wait beyond `max_num_seqs`; more get 429.
    pub max_waiting_requests: usize,
    /// The largest request body, in bytes; more get 413.
    pub max_body_bytes: usize,
    /// How long in-flight requests may run after a shutdown signal before they are aborted.
    pub shutdown_timeout: Duration,
    /// How long one generation request may take, from arrival to its last token; `None`: no
    /// limit. A request past it is aborted (504, journey reason `timeout`).
    pub request_timeout: Option<Duration>,
    /// How long a connection may take to send a request's headers, idle keep-alive time
    /// included; then it is closed.
    pub http_idle_timeout: Duration,
    /// Connections open at once; more wait in the listener's backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_waiting_requests: 256,
            max_body_bytes: 8 * 1024 * 1024,
            shutdown_timeout: Duration::from_secs(30),
            request_timeout: None,
            http_idle_timeout: Duration::from_secs(60),
            max_connections: 512,
        }
    }
}

/// The parts an [`AppState`] is made of.
#[derive(Debug)]
pub struct ServerParts {
    /// The running engine.
    pub engine: EngineHandle,
    /// The model's tokenizer.
    pub tokenizer: Arc<Tokenizer>,
    /// The model's chat template.
    pub chat_template: Arc<ChatTemplate>,
    /// The name clients must send as `model`.
    pub model_name: String,
    /// The longest request, prompt plus output (the engine's `max_model_len`).
    pub max_model_len: usize,
    /// The model's end-of-sequence tokens (the engine stops on them itself; kept for reports).
    pub eos_token_ids: Vec<u32>,
    /// Limits.
    pub limits: Limits,
    /// When set, `/v1/*` needs `Authorization: Bearer <key>`.
    pub api_key: Option<Secret>,
    /// Sampling values used where a request sets none: the model's `generation_config.json`
    /// defaults over OpenAI's (as vLLM does).
    pub sampling_defaults: SamplingParams,
    /// Journey tracing (`--enable-journey-tracing`); `None` when off: no span is made and no
    /// per-request tracing state exists.
    pub tracing: Option<Telemetry>,
    /// Journeys kept for `/journeys` (`--journey-history`); 0 keeps none.
    pub journey_history: usize,
    /// `--trace-url-template`, e.g. `http://localhost:16686/trace/{trace_id}`.
    pub trace_url_template: Option<String>,
}

/// Shared by every handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parts: ServerParts,
    /// One permit per engine request the server may have in flight.
    in_flight: Arc<Semaphore>,
    /// One permit per CPU-heavy job (tokenizing, templating) running off the async workers.
    cpu: Arc<Semaphore>,
    capacity: usize,
    created: u64,
    id_prefix: u64,
    next_id: AtomicU64,
    /// Whether a `traceparent` arriving with tracing off was already logged.
    warned_traceparent: AtomicBool,
    /// `/metrics`.
    metrics: Arc<Metrics>,
    /// `/journeys`.
    history: Arc<History>,
}

impl AppState {
    /// Builds the state from its parts.
    pub fn new(parts: ServerParts) -> Self {
        let capacity = parts.limits.max_num_seqs + parts.limits.max_waiting_requests;
        let created = unix_now();
        let id_prefix = StdRng::from_os_rng().random::<u64>();
        let metrics = Arc::new(Metrics::new(&parts.model_name));
        let history = Arc::new(History::new(parts.journey_history));
        Self {
            inner: Arc::new(Inner {
                parts,
                in_flight: Arc::new(Semaphore::new(capacity)),
                cpu: Arc::new(Semaphore::new(cpu_jobs())),
                capacity,
                created,
                id_prefix,
                next_id: AtomicU64::new(0),
                warned_traceparent: AtomicBool::new(false),
                metrics,
                history,
            }),
        }
    }

    /// The engine.
    pub fn engine(&self) -> &EngineHandle {
        &self.inner.parts.engine
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.parts.tokenizer
    }
    /// The chat template.
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.parts.chat_template
    }
    /// The served model name.
    pub fn model_name(&self) -> &str {
        &self.inner.parts.model_name
    }
    /// Sampling values for fields a request leaves out.
    pub fn sampling_defaults(&self) -> &SamplingParams {
        &self.inner.parts.sampling_defaults
    }
    /// The longest request.
    pub fn max_model_len(&self) -> usize {
        self.inner.parts.max_model_len
    }
    /// Limits.
    pub fn limits(&self) -> &Limits {
        &self.inner.parts.limits
    }
    /// The API key, if one is required.
    pub fn api_key(&self) -> Option<&Secret> {
        self.inner.parts.api_key.as_ref()
    }
    /// Journey tracing, when on.
    pub fn tracing(&self) -> Option<&Telemetry> {
        self.inner.parts.tracing.as_ref()
    }
    /// The metrics `/metrics` shows.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    /// The journey history `/journeys` shows.
    pub(crate) fn history(&self) -> &Arc<History> {
        &self.inner.history
    }
    /// `--trace-url-template`: where the journey page links a trace id (`{trace_id}` in it).
    pub(crate) fn trace_url_template(&self) -> Option<&str> {
        self.inner.parts.trace_url_template.as_deref()
    }

    /// Logs, once per server, that a request came with a `traceparent` while tracing is off.
    pub(crate) fn warn_untraced_traceparent(&self) {
        if !self.inner.warned_traceparent.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "a request arrived with a `traceparent` header but journey tracing is off; \
                 start the server with --enable-journey-tracing to trace requests \
                 (logged once)"
            );
        }
    }

    /// Unix seconds when the server started.
    pub fn created(&self) -> u64 {
        self.inner.created
    }

    /// A fresh response id: `{prefix}-` and 24 hex digits, unique for this process.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}-{:016x}{n:08x}", self.inner.id_prefix)
    }

    /// Runs CPU-heavy `job` (tokenizing, rendering a template) on the blocking pool, at most
    /// [`cpu_jobs`] at once, so that the async workers keep answering (`/health` among them).
    pub(crate) async fn run_cpu<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = Arc::clone(&self.inner.cpu)
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Unavailable("the server is shutting down".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a request's preparation failed: {e}")))?
    }

    /// Reserves room for `n` engine requests, or refuses with 429 when the server is full
    /// (and with 400 when it could never hold them).
    pub(crate) fn admit(&self, n: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        if n > self.inner.capacity {
            return Err(ApiError::invalid(
                "n",
                format!(
                    "asks for {n} choices; this server holds at most {} requests at once \
                     (--max-num-seqs + --max-waiting-requests)",
                    self.inner.capacity
                ),
            ));
        }
        let n32 = u32::try_from(n).map_err(|_| ApiError::Overloaded(self.inner.capacity))?;
        Arc::clone(&self.inner.in_flight)
            .try_acquire_many_owned(n32)
            .map_err(|_| ApiError::Overloaded(self.inner.capacity))
    }
}

/// CPU-heavy jobs run at once: one per core, at least two.
fn cpu_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
