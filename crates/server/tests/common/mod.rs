//! Shared setup of the server tests: an engine on the deterministic test executor, a small
//! trained tokenizer and the ChatML template, wrapped in an [`AppState`].

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use wayfinder_core::testing::{JourneyLog, RecordingObserver, TestExecutor, TestExecutorConfig};
use wayfinder_core::{EngineConfig, EngineHandle, EngineStats, SchedulerConfig};
use wayfinder_core::{JourneyEvent, JourneyObserver, StepDetail, StepReport};
use wayfinder_server::{AppState, Limits, ServerParts, app};
use wayfinder_text::ChatTemplate;
use wayfinder_text::Tokenizer;
use wayfinder_text::synth::{CHATML_TEMPLATE, train_tokenizer};

pub const MODEL: &str = "test-model";
pub const BLOCK_SIZE: usize = 16;
/// The engine token between the tests and their engine-core child.
pub const ENGINE_TOKEN: &str = "server-tests-engine-token";

/// The tokenizer every test uses (trained once per test binary).
pub fn tokenizer() -> Arc<Tokenizer> {
    static TOKENIZER: OnceLock<Arc<Tokenizer>> = OnceLock::new();
    TOKENIZER
        .get_or_init(|| {
            let inner = train_tokenizer(400).expect("the synthetic tokenizer trains");
            Arc::new(Tokenizer::new(inner, None))
        })
        .clone()
}

/// The end-of-sequence ids: never produced by the test executor, so outputs run to length.
pub fn eos_ids() -> Vec<u32> {
    let t = tokenizer();
    ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .map(|s| t.token_to_id(s).expect("special token"))
        .collect()
}

/// Knobs of a test server.
#[derive(Debug, Clone)]
pub struct Options {
    pub step_delay: Duration,
    pub max_num_seqs: usize,
    pub max_waiting_requests: usize,
    pub num_blocks: usize,
    pub max_model_len: usize,
    pub max_body_bytes: usize,
    pub api_key: Option<String>,
    pub shutdown_timeout: Duration,
    /// `Limits::request_timeout`.
    pub request_timeout: Option<Duration>,
    /// Engine steps (from 1) on which the executor fails.
    pub fail_on_steps: Vec<u64>,
    /// Engine steps (from 1) on which the executor panics.
    pub panic_on_steps: Vec<u64>,
    /// `Limits::http_idle_timeout` and `Limits::max_connections` (with `Running`).
    pub http_idle_timeout: Duration,
    pub max_connections: usize,
    /// `--journey-history` and `--trace-url-template`.
    pub journey_history: usize,
    pub trace_url_template: Option<String>,
    /// The model's sampling defaults.
    pub sampling_defaults: wayfinder_core::SamplingParams,
    /// Journey tracing into an in-memory exporter, with these settings.
    pub tracing: Option<wayfinder_trace::TracingConfig>,
    /// Journey tracing through this provider instead (for tests with a real OTLP receiver).
    pub telemetry: Option<wayfinder_trace::Telemetry>,
    /// Also record every journey event the engine emits (with its carrier).
    pub record_journey: bool,
    /// Run the engine in a child process (this test binary re-run as `engine_child`) reached
    /// over the engine protocol; with `tracing`, both processes export to an OTLP receiver.
    /// Needs [`TestServer::start`].
    pub engine_process: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            step_delay: Duration::ZERO,
            max_num_seqs: 8,
            max_waiting_requests: 32,
            num_blocks: 128,
            max_model_len: 256,
            max_body_bytes: 64 * 1024,
            api_key: None,
            shutdown_timeout: Duration::from_secs(10),
            request_timeout: None,
            fail_on_steps: Vec::new(),
            panic_on_steps: Vec::new(),
            http_idle_timeout: Duration::from_secs(60),
            max_connections: 512,
            journey_history: 1000,
            trace_url_template: None,
            sampling_defaults: wayfinder_core::SamplingParams::default(),
            tracing: None,
            telemetry: None,
            record_journey: false,
            engine_process: false,
        }
    }
}

/// A server's state and its engine.
#[derive(Debug, Clone)]
pub struct TestServer {
    pub state: AppState,
    pub engine: EngineHandle,
    /// Where spans go when `Options::tracing` is set.
    pub spans: Option<wayfinder_trace::InMemorySpanExporter>,
    pub telemetry: Option<wayfinder_trace::Telemetry>,
    /// The engine's journey events, when `Options::record_journey` is set.
    pub journey: Option<JourneyLog>,
    /// With `Options::engine_process`: the receiver both processes export to, and the
    /// engine child's pid.
    pub receiver: Option<Arc<wayfinder_testkit::OtlpReceiver>>,
    pub engine_pid: Option<u32>,
    /// With `Options::engine_process`: the link's view of the child (its pid now, restarts).
    pub remote: Option<Arc<wayfinder_ipc::RemoteStatus>>,
}

impl TestServer {
    pub fn new(options: &Options) -> Self {
        let tokenizer = tokenizer();
        let executor = TestExecutor::new(TestExecutorConfig {
            vocab_size: tokenizer.vocab_size(),
            num_slots: options.num_blocks * BLOCK_SIZE,
            step_delay: options.step_delay,
            avoid_tokens: eos_ids(),
            fail_on_steps: options.fail_on_steps.clone(),
            panic_on_steps: options.panic_on_steps.clone(),
        });
        let (telemetry, spans) = match (&options.telemetry, &options.tracing) {
            (Some(t), _) => (Some(t.clone()), None),
            (None, Some(config)) => {
                let exporter = wayfinder_trace::InMemorySpanExporter::default();
                let t = wayfinder_trace::Telemetry::with_exporter(config.clone(), exporter.clone());
                (Some(t), Some(exporter))
            }
            (None, None) => (None, None),
        };
        let core = telemetry.as_ref().map(wayfinder_trace::CoreObserver::new);
        let (recorder, journey) = if options.record_journey {
            let (r, log) = RecordingObserver::new();
            (Some(r), Some(log))
        } else {
            (None, None)
        };
        let observer = match (core, recorder) {
            (None, None) => None,
            (core, recorder) => Some(Box::new(Tee { core, recorder }) as Box<dyn JourneyObserver>),
        };
        let engine = EngineHandle::spawn(
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: options.max_num_seqs,
                    max_num_batched_tokens: 512,
                    max_model_len: options.max_model_len,
                    block_size: BLOCK_SIZE,
                    num_blocks: options.num_blocks,
                    ..SchedulerConfig::default()
                },
                eos_token_ids: eos_ids(),
                seed: Some(7),
            },
            Box::new(executor),
            observer,
        )
        .expect("the engine starts");
        let state = state_of(options, engine.clone(), telemetry.clone());
        Self {
            state,
            engine,
            spans,
            telemetry,
            journey,
            receiver: None,
            engine_pid: None,
            remote: None,
        }
    }

    /// [`TestServer::new`], or with `Options::engine_process` the engine in a child process.
    pub async fn start(options: &Options) -> Self {
        if !options.engine_process {
            return Self::new(options);
        }
        let receiver = Arc::new(
            wayfinder_testkit::OtlpReceiver::start()
                .await
                .expect("an OTLP receiver"),
        );
        let tracing_config = |role| {
            options
                .tracing
                .clone()
                .map(|c| wayfinder_trace::TracingConfig {
                    endpoint: Some(receiver.grpc_endpoint()),
                    protocol: Some("grpc".into()),
                    role,
                    export_interval: Duration::from_millis(50),
                    ..c
                })
        };
        let telemetry = tracing_config(wayfinder_trace::ProcessRole::Api)
            .map(|c| wayfinder_trace::Telemetry::otlp(&c).expect("an OTLP provider"));
        let child = json!({
            "vocab_size": tokenizer().vocab_size(),
            "eos": eos_ids(),
            "num_blocks": options.num_blocks,
            "max_num_seqs": options.max_num_seqs,
            "max_model_len": options.max_model_len,
            "step_delay_ms": options.step_delay.as_millis() as u64,
            "fail_on_steps": options.fail_on_steps,
            "tracing": tracing_config(wayfinder_trace::ProcessRole::Engine).map(|c| json!({
                "endpoint": c.endpoint,
                "sample_rate": c.sample_rate,
                "step_enabled": c.step.enabled,
                "step_rate": c.step.sample_rate,
                "step_rich": c.step.rich_subsample_rate,
            })),
        });
        let socket = std::env::temp_dir().join(format!(
            "wayfinder-test-{}-{}.sock",
            std::process::id(),
            NEXT_CHILD.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let addr = wayfinder_ipc::EngineAddr::Unix(socket);
        let spawn = wayfinder_ipc::SpawnSpec {
            program: std::env::current_exe().expect("this test binary"),
            args: ["engine_child", "--exact", "--ignored", "--nocapture"]
                .map(Into::into)
                .to_vec(),
            envs: vec![
                (CHILD_ENV.into(), child.to_string().into()),
                (CHILD_ADDR_ENV.into(), addr.to_string().into()),
            ],
        };
        let config = wayfinder_ipc::RemoteConfig {
            startup_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_millis(500),
            ..wayfinder_ipc::RemoteConfig::new(
                addr,
                Some(spawn),
                wayfinder_ipc::SecretText::new(ENGINE_TOKEN),
            )
        };
        let (engine, info, status) =
            tokio::task::spawn_blocking(move || wayfinder_ipc::connect(config))
                .await
                .expect("join")
                .expect("the engine child starts");
        let state = state_of(options, engine.clone(), telemetry.clone());
        Self {
            state,
            engine,
            spans: None,
            telemetry,
            journey: None,
            receiver: Some(receiver),
            engine_pid: Some(info.pid),
            remote: Some(status),
        }
    }

    pub fn default_server() -> Self {
        Self::new(&Options::default())
    }

    /// Sends one request in process.
    pub async fn call(&self, request: Request<Body>) -> Reply {
        let response = app(self.state.clone())
            .oneshot(request)
            .await
            .expect("the router never fails");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the body is readable");
        Reply {
            status,
            headers,
            text: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.call(post(path, body)).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.call(
            Request::get(path)
                .body(Body::empty())
                .expect("valid request"),
        )
        .await
    }

    /// Waits (bounded) until the engine holds no request and every block is free.
    pub async fn wait_idle(&self) -> EngineStats {
        let mut stats = self.engine.stats().await.expect("engine up");
        for _ in 0..500 {
            if stats.num_running == 0
                && stats.num_waiting == 0
                && stats.num_free_blocks == stats.num_total_blocks
            {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            stats = self.engine.stats().await.expect("engine up");
        }
        panic!("the engine did not become idle: {stats:?}");
    }
}

/// The API state of a test server around `engine`.
fn state_of(
    options: &Options,
    engine: EngineHandle,
    telemetry: Option<wayfinder_trace::Telemetry>,
) -> AppState {
    let template = ChatTemplate::new(
        Some(CHATML_TEMPLATE),
        String::new(),
        "<|im_end|>".to_owned(),
    )
    .expect("the template compiles");
    AppState::new(ServerParts {
        engine,
        tokenizer: tokenizer(),
        chat_template: Arc::new(template),
        model_name: MODEL.to_owned(),
        max_model_len: options.max_model_len,
        eos_token_ids: eos_ids(),
        limits: Limits {
            max_num_seqs: options.max_num_seqs,
            max_waiting_requests: options.max_waiting_requests,
            max_body_bytes: options.max_body_bytes,
            shutdown_timeout: options.shutdown_timeout,
            request_timeout: options.request_timeout,
            http_idle_timeout: options.http_idle_timeout,
            max_connections: options.max_connections,
        },
        api_key: options
            .api_key
            .as_deref()
            .map(|k| wayfinder_ipc::Secret::new(k).expect("a usable test key")),
        sampling_defaults: options.sampling_defaults.clone(),
        tracing: telemetry,
        journey_history: options.journey_history,
        trace_url_template: options.trace_url_template.clone(),
    })
}

const CHILD_ENV: &str = "WAYFINDER_TEST_ENGINE";
const CHILD_ADDR_ENV: &str = "WAYFINDER_TEST_ENGINE_ADDR";
static NEXT_CHILD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The engine-core child of `Options::engine_process`: the test executor behind the engine
/// protocol, with its own tracer provider (role `engine`) exporting to the parent's receiver,
/// until its stdin closes or it gets SIGTERM. Call it from an `#[ignore]`d test named
/// `engine_child`; without the environment the parent sets, it does nothing.
pub fn engine_child_main() {
    let (Ok(spec), Ok(addr)) = (std::env::var(CHILD_ENV), std::env::var(CHILD_ADDR_ENV)) else {
        return;
    };
    let spec: Value = serde_json::from_str(&spec).expect("the parent's JSON");
    let n = |k: &str| spec[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let telemetry = spec["tracing"].as_object().map(|t| {
        wayfinder_trace::Telemetry::otlp(&wayfinder_trace::TracingConfig {
            endpoint: t["endpoint"].as_str().map(str::to_owned),
            protocol: Some("grpc".into()),
            role: wayfinder_trace::ProcessRole::Engine,
            sample_rate: t["sample_rate"].as_f64().unwrap_or(1.0),
            step: wayfinder_trace::StepTracingConfig {
                enabled: t["step_enabled"].as_bool().unwrap_or(false),
                sample_rate: t["step_rate"].as_f64().unwrap_or(0.01),
                rich_subsample_rate: t["step_rich"].as_f64().unwrap_or(0.001),
            },
            export_interval: Duration::from_millis(50),
            ..wayfinder_trace::TracingConfig::default()
        })
        .expect("the engine's provider")
    });
    let eos: Vec<u32> = serde_json::from_value(spec["eos"].clone()).expect("eos ids");
    let executor = TestExecutor::new(TestExecutorConfig {
        vocab_size: n("vocab_size"),
        num_slots: n("num_blocks") * BLOCK_SIZE,
        step_delay: Duration::from_millis(n("step_delay_ms") as u64),
        avoid_tokens: eos.clone(),
        fail_on_steps: serde_json::from_value(spec["fail_on_steps"].clone()).expect("steps"),
        panic_on_steps: Vec::new(),
    });
    let observer = telemetry
        .as_ref()
        .map(|t| Box::new(wayfinder_trace::CoreObserver::new(t)) as Box<dyn JourneyObserver>);
    let engine = EngineHandle::spawn(
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: n("max_num_seqs"),
                max_num_batched_tokens: 512,
                max_model_len: n("max_model_len"),
                block_size: BLOCK_SIZE,
                num_blocks: n("num_blocks"),
                ..SchedulerConfig::default()
            },
            eos_token_ids: eos,
            seed: Some(7),
        },
        Box::new(executor),
        observer,
    )
    .expect("the engine starts");
    let info = wayfinder_ipc::EngineInfo {
        pid: std::process::id(),
        max_model_len: n("max_model_len"),
        num_blocks: n("num_blocks"),
        block_size: BLOCK_SIZE,
    };
    let access =
        wayfinder_ipc::Access::new(wayfinder_ipc::Secret::new(ENGINE_TOKEN).expect("a token"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = wayfinder_ipc::EngineAddr::parse(&addr)
            .expect("address")
            .listen()
            .await
            .expect("listen");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = wayfinder_ipc::serve(listener, engine.clone(), info, access) => {}
            () = wayfinder_ipc::stdin_closed() => {}
            _ = term.recv() => {}
        }
    });
    runtime.shutdown_background();
    engine.shutdown();
    if let Some(t) = telemetry {
        t.shutdown();
    }
}

/// The engine's observer in tests: the OpenTelemetry one, a recorder, or both.
struct Tee {
    core: Option<wayfinder_trace::CoreObserver>,
    recorder: Option<RecordingObserver>,
}

impl JourneyObserver for Tee {
    fn on_event(&mut self, event: &JourneyEvent<'_>) {
        if let Some(r) = &mut self.recorder {
            r.on_event(event);
        }
        if let Some(c) = &mut self.core {
            c.on_event(event);
        }
    }

    fn step_detail(&mut self, step: u64) -> StepDetail {
        self.core
            .as_mut()
            .map_or(StepDetail::Skip, |c| c.step_detail(step))
    }

    fn on_step(&mut self, report: &StepReport<'_>) {
        if let Some(c) = &mut self.core {
            c.on_step(report);
        }
    }
}

pub fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid request")
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    /// Asserts an OpenAI error body with this status; returns `error`.
    pub fn error(&self, status: StatusCode) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        let body = self.json();
        let error = body["error"].clone();
        for field in ["message", "type", "param", "code"] {
            assert!(
                error.get(field).is_some(),
                "missing error.{field}: {}",
                self.text
            );
        }
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        error
    }

    /// The `data:` payloads of an SSE body, in order.
    pub fn sse_data(&self) -> Vec<String> {
        sse_data(&self.text)
    }
}

/// The `data:` payloads of an SSE body; asserts the framing (events end with a blank line).
pub fn sse_data(text: &str) -> Vec<String> {
    assert!(text.ends_with("\n\n"), "an SSE body ends with a blank line");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|event| {
            let data = event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {event:?}"));
            assert!(!data.contains('\n'), "one line per event");
            data.to_owned()
        })
        .collect()
}

/// The greedy output text of `prompt` continued by `n` tokens, as the engine should produce it.
pub fn expected_text(prompt: &[u32], n: usize) -> String {
    let t = tokenizer();
    let executor = TestExecutor::new(TestExecutorConfig {
        vocab_size: t.vocab_size(),
        num_slots: 1,
        avoid_tokens: eos_ids(),
        ..TestExecutorConfig::default()
    });
    let ids = executor.expected_greedy(prompt, n);
    t.decode(&ids, true).expect("decodes")
}

/// A server on a real socket with a shutdown trigger.
pub struct Running {
    pub server: TestServer,
    pub addr: SocketAddr,
    pub shutdown: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    pub async fn start(options: &Options) -> Self {
        let server = TestServer::start(options).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wayfinder_server::run(
            listener,
            server.state.clone(),
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            server,
            addr,
            shutdown: Some(tx),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn post(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
    }
}

/// Log lines written through a test subscriber (DEBUG and up, no colours).
#[derive(Debug, Clone, Default)]
pub struct CapturedLogs(Arc<std::sync::Mutex<Vec<u8>>>);

impl CapturedLogs {
    /// A subscriber writing here at DEBUG; install it with `tracing::subscriber::set_default`.
    pub fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        self.subscriber_at(tracing::Level::DEBUG)
    }

    /// A subscriber writing here at `level`.
    pub fn subscriber_at(
        &self,
        level: tracing::Level,
    ) -> impl tracing::Subscriber + Send + Sync + use<> {
        let sink = self.clone();
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish()
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// This process's resident memory, in KiB (0 where `/proc` has no answer).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
