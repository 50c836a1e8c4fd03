//! What journey tracing costs: throughput and CPU per request with tracing off, sampled at
//! 10 % and at 100 %, with the journey history alone (`history`) and with both (`all`), exporting over OTLP/gRPC to a real receiver in a child process (so its
//! CPU is not counted), with the deterministic test executor (where the API and engine code is
//! nearly all there is, so the tracing cost stands out) and with the demo model.
//!
//! `cargo bench -p wayfinder-server --bench tracing_overhead` (add `-- --quick` for a short
//! run). Non-streaming chat requests, `max_tokens` 16, 32 in flight, through the router in
//! process; the modes alternate round by round and the median round is reported, with the
//! median of the rounds' paired differences "100 % − off" in CPU per request.
//!
//! Flags after `--`: `--only test|demo|spans`, `--model PATH` (the "demo" part on another model:
//! a GGUF file or a folder, e.g. the real SmolLM2 of `scripts/fetch-smollm2.sh`), `--requests N`
//! (per round of the model part), `--rounds N`, `--rate R` (requests start at R
//! per second instead of as fast as 32 in flight allow: every mode then runs at the same
//! throughput), `--protocol http/protobuf`, `--mode NAME` (only that mode; repeatable),
//! `--verbose` (every round's CPU per request).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use serde_json::json;
use tower::ServiceExt;
use wayfinder_core::{EngineConfig, EngineHandle, JourneyObserver, SchedulerConfig};
use wayfinder_model::{LoadOptions, ModelExecutor};
use wayfinder_server::{AppState, Limits, ServerParts, app};
use wayfinder_testkit::OtlpReceiver;
use wayfinder_trace::{CoreObserver, Telemetry, TracingConfig};

/// The allocator `wayfinder serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECEIVER_ENV: &str = "WAYFINDER_BENCH_RECEIVER";
const CONCURRENCY: usize = 32;
const MAX_TOKENS: u32 = 16;

fn main() {
    if std::env::var_os(RECEIVER_ENV).is_some() {
        run_receiver();
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    // `wayfinder serve`'s logging (fmt at INFO), so that what logging costs a traced request —
    // its log span with the trace id — is counted; written nowhere, to keep the report clean.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();
    let receiver = Receiver::spawn();
    // `--rounds N` (default 5, and 3 for the demo model; 1 with `--quick`).
    let asked: Option<usize> = flag("--rounds").and_then(|r| r.parse().ok());
    let rounds = asked.unwrap_or(if quick { 1 } else { 5 });
    let demo_rounds = asked.unwrap_or(rounds.min(3));
    println!(
        "tracing overhead: {CONCURRENCY} requests in flight, max_tokens {MAX_TOKENS}, OTLP {} to {}",
        receiver.target().0,
        receiver.target().1
    );
    println!(
        "{:<14} {:>6} {:>9} {:>12} {:>14} {:>10}",
        "executor", "mode", "requests", "requests/s", "CPU µs/request", "spans out"
    );
    let (test_n, mut demo_n) = if quick { (2000, 64) } else { (20000, 512) };
    if let Some(n) = flag("--requests").and_then(|n| n.parse().ok()) {
        demo_n = n;
    }
    // `--only test|demo|spans` runs one part.
    let only = flag("--only");
    let part = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if part("test") {
        bench(
            "test executor",
            test_n,
            rounds,
            &receiver,
            Workload::TestExecutor,
        );
    }
    if part("demo") {
        let label = if flag("--model").is_some() {
            "model"
        } else {
            "demo model"
        };
        bench(label, demo_n, demo_rounds, &receiver, Workload::Demo);
    }
    if part("spans") {
        let n = if quick { 5_000 } else { 50_000 };
        span_work(n, "grpc", &receiver.endpoint);
        span_work(n, "http/protobuf", &receiver.http_endpoint);
    }
}

/// The median and the quartiles of `values` (nearest rank).
fn quartiles(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.25), at(0.75))
}

/// The value after `name` on the command line.
fn flag(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// Every value given after `name` on the command line.
fn flags(name: &str) -> Vec<String> {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .filter(|w| w[0] == name)
        .map(|w| w[1].clone())
        .collect()
}

#[derive(Clone, Copy)]
enum Workload {
    TestExecutor,
    Demo,
}

#[derive(Clone, Copy, Debug)]
struct Mode {
    name: &'static str,
    rate: Option<f64>,
    /// `--journey-history` (0: off).
    history: usize,
}

/// The modes; `/metrics` is recorded in every one (it cannot be turned off).
const MODES: [Mode; 6] = [
    Mode {
        name: "off",
        rate: None,
        history: 0,
    },
    Mode {
        name: "0%",
        rate: Some(0.0),
        history: 0,
    },
    Mode {
        name: "10%",
        rate: Some(0.1),
        history: 0,
    },
    Mode {
        name: "100%",
        rate: Some(1.0),
        history: 0,
    },
    Mode {
        name: "history",
        rate: None,
        history: 1000,
    },
    Mode {
        name: "all",
        rate: Some(1.0),
        history: 1000,
    },
];

#[derive(Clone, Copy, Debug, Default)]
struct Run {
    requests_per_s: f64,
    cpu_us_per_request: f64,
    spans: u64,
}

fn bench(label: &str, n: usize, rounds: usize, receiver: &Receiver, workload: Workload) {
    // One async thread for clients and server, beside the engine's thread: two busy threads on
    // the two cores, so that run-to-run scheduling noise stays small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); MODES.len()];
    // `--mode NAME` (repeatable) runs only those modes (for profiling, or a quicker A/B).
    let wanted = flags("--mode");
    // One warm-up round, not reported; the modes' order changes from round to round.
    for round in 0..=rounds {
        let mut order: Vec<usize> = (0..MODES.len()).collect();
        order.rotate_left(round % MODES.len());
        for i in order {
            let mode = &MODES[i];
            if !wanted.is_empty() && !wanted.iter().any(|w| w == mode.name) {
                continue;
            }
            let run = runtime.block_on(run_once(n, *mode, receiver.target(), workload));
            if round > 0 {
                runs[i].push(run);
            }
        }
    }
    // The cost of 100 % tracing, round by round: each round runs every mode back to back, so
    // pairing them cancels the machine's slow drift.
    let (off, full) = (&runs[0], &runs[MODES.len() - 1]);
    if !off.is_empty() && off.len() == full.len() {
        let diffs: Vec<f64> = off
            .iter()
            .zip(full)
            .map(|(o, f)| f.cpu_us_per_request - o.cpu_us_per_request)
            .collect();
        let listed: Vec<String> = diffs.iter().map(|d| format!("{d:.1}")).collect();
        let (median, q1, q3) = quartiles(diffs);
        println!(
            "{label:<14} 100 % - off, CPU µs per request: median {median:.1}, middle half \
             {q1:.1} to {q3:.1} (rounds: {})",
            listed.join(", ")
        );
        let ratios: Vec<f64> = off
            .iter()
            .zip(full)
            .map(|(o, f)| f.requests_per_s / o.requests_per_s)
            .collect();
        let listed: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
        let (median, q1, q3) = quartiles(ratios);
        println!(
            "{label:<14} 100 % / off, requests/s: median {median:.3}, middle half {q1:.3} to \
             {q3:.3} (rounds: {})",
            listed.join(", ")
        );
        if std::env::args().any(|a| a == "--verbose") {
            let cpu = |rs: &[Run]| -> Vec<String> {
                rs.iter()
                    .map(|r| format!("{:.1}", r.cpu_us_per_request))
                    .collect()
            };
            println!("  off:  {}", cpu(off).join(", "));
            println!("  100%: {}", cpu(full).join(", "));
        }
    }
    for (mode, mut rs) in MODES.iter().zip(runs) {
        if rs.is_empty() {
            continue;
        }
        rs.sort_by(|a, b| a.requests_per_s.total_cmp(&b.requests_per_s));
        let med = rs[rs.len() / 2];
        let mut cpu: Vec<f64> = rs.iter().map(|r| r.cpu_us_per_request).collect();
        cpu.sort_by(f64::total_cmp);
        println!(
            "{label:<14} {:>6} {n:>9} {:>12.1} {:>14.1} {:>10}",
            mode.name,
            med.requests_per_s,
            cpu[cpu.len() / 2],
            med.spans
        );
    }
}

async fn run_once(n: usize, mode: Mode, target: (&str, &str), workload: Workload) -> Run {
    let (protocol, endpoint) = target;
    let telemetry = mode.rate.map(|rate| {
        Telemetry::otlp(&TracingConfig {
            endpoint: Some(endpoint.to_owned()),
            protocol: Some(protocol.to_owned()),
            sample_rate: rate,
            // `serve`'s default queue (4 096 spans): a ring the size of a whole run would put
            // a first-touch page fault under every few spans, which a long-running server
            // does not pay.
            ..TracingConfig::default()
        })
        .expect("provider")
    });
    let state = match workload {
        Workload::TestExecutor => {
            common::TestServer::new(&common::Options {
                max_num_seqs: CONCURRENCY,
                max_waiting_requests: n,
                num_blocks: 1024,
                telemetry: telemetry.clone(),
                journey_history: mode.history,
                ..common::Options::default()
            })
            .state
        }
        Workload::Demo => demo_state(telemetry.clone(), mode.history),
    };
    let model = state.model_name().to_owned();
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "tell me a story about the sea"}],
        "max_tokens": MAX_TOKENS,
        "ignore_eos": true,
    });
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    // `--rate R`: requests start at R per second (open loop, still at most CONCURRENCY in
    // flight), so that every mode runs at the same throughput and the engine batches alike;
    // CPU per request then compares work, not how full each engine step was.
    let rate: Option<f64> = flag("--rate").and_then(|r| r.parse().ok());
    let start = tokio::time::Instant::now();
    let ok = futures_util::stream::iter(0..n)
        .map(|i| {
            let state = state.clone();
            let request = common::post("/v1/chat/completions", &body);
            async move {
                if let Some(rate) = rate {
                    let at = start + std::time::Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(at).await;
                }
                let response = app(state).oneshot(request).await.expect("router");
                let ok = response.status().is_success();
                let _ = axum::body::to_bytes(response.into_body(), usize::MAX).await;
                ok
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(ok, n, "every request succeeds");
    let stats = match &telemetry {
        Some(t) => {
            let t = t.clone();
            tokio::task::spawn_blocking(move || {
                t.shutdown();
                t.stats()
            })
            .await
            .expect("flush")
        }
        None => wayfinder_trace::ExportStats::default(),
    };
    let spans = stats.exported;
    let engine = state.engine().clone();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .expect("engine shutdown");
    if mode.rate == Some(1.0) && spans < 2 * n as u64 {
        eprintln!(
            "warning: {} of {} spans not exported in mode {} ({} lost to failed exports, the \
             rest dropped at a full queue): its CPU per request is not comparable",
            2 * n as u64 - spans,
            2 * n,
            mode.name,
            stats.failed,
        );
    }
    Run {
        requests_per_s: n as f64 / wall,
        cpu_us_per_request: cpu * 1e6 / n as f64,
        spans,
    }
}

/// The demo model (or `--model PATH`) behind an [`AppState`].
fn demo_state(telemetry: Option<Telemetry>, history: usize) -> AppState {
    let dir = flag("--model").map_or_else(
        || {
            wayfinder_model::synth::demo::ensure_demo(&wayfinder_model::synth::demo::cache_root())
                .expect("the demo model")
        },
        std::path::PathBuf::from,
    );
    let model = wayfinder_model::load(&dir, &LoadOptions::default()).expect("loads");
    let model_name = model.text.name.clone();
    let block_size = 16;
    let num_blocks = 1024;
    let max_model_len = model.max_model_len.min(num_blocks * block_size);
    let eos = model.text.eos_token_ids.clone();
    let observer = telemetry
        .as_ref()
        .map(|t| Box::new(CoreObserver::new(t)) as Box<dyn JourneyObserver>);
    let engine = EngineHandle::spawn(
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: CONCURRENCY,
                max_num_batched_tokens: 2048,
                max_model_len,
                block_size,
                num_blocks,
                ..SchedulerConfig::default()
            },
            eos_token_ids: eos.clone(),
            seed: Some(1),
        },
        Box::new(ModelExecutor::new(model.decoder, num_blocks, block_size)),
        observer,
    )
    .expect("engine");
    AppState::new(ServerParts {
        engine,
        tokenizer: Arc::new(model.text.tokenizer),
        chat_template: Arc::new(model.text.chat_template),
        model_name,
        max_model_len,
        eos_token_ids: eos,
        limits: Limits {
            max_num_seqs: CONCURRENCY,
            max_waiting_requests: 100_000,
            ..Limits::default()
        },
        api_key: None,
        sampling_defaults: wayfinder_core::SamplingParams::default(),
        tracing: telemetry,
        journey_history: history,
        trace_url_template: None,
    })
}

/// User + system CPU seconds of this process (not of the receiver child).
fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` fills the struct it is given; RUSAGE_SELF is always valid.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The OTLP receiver, in a child process (this binary, re-run with [`RECEIVER_ENV`]).
struct Receiver {
    child: Child,
    /// Its OTLP/gRPC endpoint.
    endpoint: String,
    /// Its OTLP/HTTP endpoint.
    http_endpoint: String,
}

impl Receiver {
    /// The protocol and endpoint the in-server runs export to: `--protocol http/protobuf`
    /// picks HTTP, gRPC otherwise (the default, as in `serve`).
    fn target(&self) -> (&'static str, &str) {
        if std::env::args().any(|a| a == "http/protobuf") {
            ("http/protobuf", &self.http_endpoint)
        } else {
            ("grpc", &self.endpoint)
        }
    }

    fn spawn() -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this binary"))
            .env(RECEIVER_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("its endpoint");
        let mut endpoints = line.split_whitespace().map(str::to_owned);
        Self {
            child,
            endpoint: endpoints.next().expect("gRPC endpoint"),
            http_endpoint: endpoints.next().expect("HTTP endpoint"),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The child: serve OTLP until stdin closes.
fn run_receiver() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let receiver = OtlpReceiver::start_counting().await.expect("receiver");
        println!("{} {}", receiver.grpc_endpoint(), receiver.http_endpoint());
        std::io::stdout().flush().expect("stdout");
        tokio::task::spawn_blocking(|| {
            let mut sink = String::new();
            while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        })
        .await
        .expect("stdin");
    });
}

/// The tracing work of one request alone — `llm_request` with its attributes and events, the
/// carrier, `llm_core` with a run's four journey events, both ended, batched, encoded and sent
/// over gRPC — repeated `n` times on one thread; CPU per request including the export.
fn span_work(n: usize, protocol: &str, endpoint: &str) {
    use wayfinder_core::journey::{JourneyEvent, JourneyEventKind, JourneyFields};
    use wayfinder_core::{FinishStatus, Phase, ScheduleKind, SeqId};
    let telemetry = Telemetry::otlp(&TracingConfig {
        endpoint: Some(endpoint.to_owned()),
        protocol: Some(protocol.to_owned()),
        // `serve`'s default queue (4 096 spans), flushed every 1 024 requests below.
        ..TracingConfig::default()
    })
    .expect("provider");
    let mut observer = CoreObserver::new(&telemetry);
    let headers = axum::http::HeaderMap::new();
    let params = wayfinder_trace::RequestParams {
        model: "demo".into(),
        temperature: 0.7,
        top_p: 1.0,
        max_tokens: 16,
        n: 1,
        stream: false,
        seed: None,
    };
    let kinds = [
        JourneyEventKind::Queued,
        JourneyEventKind::Scheduled(ScheduleKind::First),
        JourneyEventKind::FirstToken,
        JourneyEventKind::Finished(FinishStatus::Length),
    ];
    let cpu0 = cpu_seconds();
    for i in 0..n {
        if i % 1024 == 1023 {
            // Keep the queue short, as a server's steady stream of spans does.
            telemetry.force_flush();
        }
        let id = format!("chatcmpl-{i:024x}");
        let mut span = telemetry
            .start_request(&headers, &id, "chat")
            .expect("sampled");
        span.set_params(&params);
        let carrier = span.carrier();
        span.handed_off();
        for (k, kind) in kinds.into_iter().enumerate() {
            observer.on_event(&JourneyEvent {
                seq_id: SeqId(i as u64),
                request_id: &id,
                carrier: &carrier,
                kind,
                fields: JourneyFields {
                    ts_monotonic: wayfinder_core::clock::monotonic_now(),
                    scheduler_step: k as u64,
                    phase: Phase::Decode,
                    prefill_done_tokens: 20,
                    prefill_total_tokens: 20,
                    decode_done_tokens: k,
                    decode_max_tokens: 16,
                    num_preemptions: 0,
                    prefix_cache_hit_tokens: 0,
                },
            });
            if k == 2 {
                span.first_response();
            }
        }
        span.set_usage(&wayfinder_trace::Usage {
            prompt_tokens: 20,
            completion_tokens: 16,
            cached_prompt_tokens: 0,
        });
        span.set_response("demo", &id, &["length"]);
        span.set_latency(&wayfinder_trace::Latency {
            time_in_queue: Some(0.001),
            time_to_first_token: Some(0.01),
            e2e: Some(0.1),
            prefill: Some(0.009),
            decode: Some(0.09),
        });
        span.departed();
    }
    telemetry.shutdown();
    let cpu = cpu_seconds() - cpu0;
    let stats = telemetry.stats();
    assert_eq!(stats.exported, 2 * n as u64, "every span exported");
    println!(
        "span work alone, {protocol}: {n} traced requests, {:.1} CPU µs per request (both \
         spans built, batched, encoded and sent)",
        cpu * 1e6 / n as f64
    );
}
