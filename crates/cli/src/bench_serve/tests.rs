//! `bench serve` against real sockets: an in-process wayfinder server on the deterministic test
//! executor (every request accounted for, token counts from the server's usage), and a small
//! axum server that answers badly (every bad answer a counted failure, never a crash).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use indicatif::ProgressBar;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use wayfinder_core::testing::{TestExecutor, TestExecutorConfig};
use wayfinder_core::{EngineConfig, EngineHandle, SamplingParams, SchedulerConfig};
use wayfinder_server::{AppState, Limits, ServerParts};
use wayfinder_text::ChatTemplate;
use wayfinder_text::Tokenizer;
use wayfinder_text::synth::{CHATML_TEMPLATE, train_tokenizer};

use super::client::{FailureKind, Success};
use super::*;

const MODEL: &str = "bench-test-model";
const BLOCK_SIZE: usize = 16;

/// The options of a run against `base_url`, as the command line's defaults would give them.
fn args(base_url: &str) -> Args {
    Args {
        base_url: base_url.to_owned(),
        endpoint: Endpoint::Completions,
        model: None,
        num_prompts: 10,
        request_rate: f64::INFINITY,
        max_concurrency: None,
        input_len: 16,
        shared_prefix_len: 0,
        shared_prefix_ratio: 1.0,
        output_len: 8,
        seed: 0,
        traceparent: false,
        extra_body: None,
        api_key: None,
        request_timeout: 60.0,
        result_json: None,
    }
}

/// A wayfinder API server on 127.0.0.1:0 over the deterministic test executor (which never
/// picks an end-of-sequence token, so every request runs to `max_tokens`).
struct Wayfinder {
    url: String,
    tokenizer: Arc<Tokenizer>,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Wayfinder {
    async fn start() -> Self {
        let tokenizer = Arc::new(Tokenizer::new(
            train_tokenizer(400).expect("the synthetic tokenizer trains"),
            None,
        ));
        let eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .map(|t| tokenizer.token_to_id(t).expect("a special token"))
            .collect();
        let (num_blocks, max_num_seqs, max_model_len) = (128, 8, 512);
        let executor = TestExecutor::new(TestExecutorConfig {
            vocab_size: tokenizer.vocab_size(),
            num_slots: num_blocks * BLOCK_SIZE,
            avoid_tokens: eos.clone(),
            ..TestExecutorConfig::default()
        });
        let engine = EngineHandle::spawn(
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs,
                    max_num_batched_tokens: 512,
                    max_model_len,
                    block_size: BLOCK_SIZE,
                    num_blocks,
                    ..SchedulerConfig::default()
                },
                eos_token_ids: eos.clone(),
                seed: Some(7),
            },
            Box::new(executor),
            None,
        )
        .expect("the engine starts");
        let template = ChatTemplate::new(Some(CHATML_TEMPLATE), String::new(), "<|im_end|>".into())
            .expect("the template compiles");
        let state = AppState::new(ServerParts {
            engine,
            tokenizer: tokenizer.clone(),
            chat_template: Arc::new(template),
            model_name: MODEL.to_owned(),
            max_model_len,
            eos_token_ids: eos,
            limits: Limits {
                max_num_seqs,
                max_waiting_requests: 64,
                max_body_bytes: 64 * 1024,
                shutdown_timeout: Duration::from_secs(10),
                ..Limits::default()
            },
            api_key: None,
            sampling_defaults: SamplingParams::default(),
            tracing: None,
            journey_history: 0,
            trace_url_template: None,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("an address"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(wayfinder_server::run(listener, state, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            tokenizer,
            shutdown: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task
            .await
            .expect("the server task")
            .expect("the server stops cleanly");
    }
}

fn successes(run: &Run) -> Vec<&Success> {
    run.results
        .iter()
        .map(|r| r.outcome.as_ref().expect("every request completes"))
        .collect()
}

/// Each request's latency is its TTFT plus its inter-token gaps.
fn assert_times_add_up(s: &Success) {
    assert!(s.ttft > 0.0 && s.ttft <= s.latency, "{s:?}");
    let sum = s.ttft + s.itl.iter().sum::<f64>();
    assert!((sum - s.latency).abs() < 1e-9, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_against_wayfinder_accounts_for_every_request_and_token() {
    let server = Wayfinder::start().await;
    let args = Args {
        num_prompts: 20,
        max_concurrency: Some(4),
        ..args(&format!("{}/v1/", server.url))
    };
    let run = bench(&args, &ProgressBar::hidden())
        .await
        .expect("the run completes");
    assert_eq!(run.workload.model, MODEL, "the model from GET /v1/models");
    assert_eq!(run.results.len(), 20);
    assert_eq!((run.summary.completed, run.summary.failed), (20, 0));
    assert_eq!(run.summary.total_output_tokens, 20 * 8);
    // The input count is the server's: the prompts as its tokenizer encodes them.
    let expected_input: usize = run
        .workload
        .requests()
        .iter()
        .map(|r| {
            let prompt = r.body["prompt"].as_str().expect("a text prompt");
            server
                .tokenizer
                .encode(prompt, true)
                .expect("encodes")
                .len()
        })
        .sum();
    assert_eq!(run.summary.total_input_tokens, expected_input as u64);
    for s in successes(&run) {
        assert_eq!(s.output_tokens, 8);
        assert!(s.itl.len() <= 7);
        assert_times_add_up(s);
    }
    let s = &run.summary;
    for dist in [s.ttft, s.tpot, s.itl, s.e2el] {
        let d = dist.expect("measured");
        assert!(d.median_ms <= d.p90_ms && d.p90_ms <= d.p99_ms);
    }
    let throughput = 160.0 / s.duration_s;
    assert!((s.output_throughput - throughput).abs() < 1e-9);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_run_counts_the_templated_prompt() {
    let server = Wayfinder::start().await;
    let args = Args {
        endpoint: Endpoint::Chat,
        model: Some(MODEL.to_owned()),
        num_prompts: 6,
        max_concurrency: Some(2),
        output_len: 4,
        ..args(&server.url)
    };
    let run = bench(&args, &ProgressBar::hidden())
        .await
        .expect("the run completes");
    assert_eq!(
        (run.summary.completed, run.summary.total_output_tokens),
        (6, 24)
    );
    for (s, r) in successes(&run).iter().zip(run.workload.requests()) {
        let content = r.body["messages"][0]["content"].as_str().expect("text");
        let rendered = format!("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n");
        let tokens = server.tokenizer.encode(&rendered, false).expect("encodes");
        assert_eq!(s.prompt_tokens, tokens.len() as u64);
        assert_eq!(s.output_tokens, 4);
        assert_times_add_up(s);
    }
    server.stop().await;
}

/// What the bad server has seen.
#[derive(Debug, Default)]
struct Seen {
    requests: AtomicUsize,
    traceparents: Mutex<Vec<String>>,
}

/// Answers the `n`-th request in one of seven ways, in turn; the first is the only good one.
async fn bad_completions(State(seen): State<Arc<Seen>>, headers: HeaderMap) -> Response {
    if let Some(t) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let mut list = seen
            .traceparents
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        list.push(t.to_owned());
    }
    let n = seen.requests.fetch_add(1, Ordering::SeqCst);
    let sse = |body: &'static [u8]| {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from(body))
    };
    let response = match n % 7 {
        0 => sse(b"data: {\"choices\":[{\"text\":\"hi\"}]}\n\n\
            data: {\"choices\":[{\"text\":\" there\",\"finish_reason\":\"length\"}]}\n\n\
            data: [DONE]\n\n"),
        1 => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(
                r#"{"error":{"message":"boom","type":"server_error"}}"#,
            )),
        2 => sse(b"data: {\"choices\":[{\"text\":\"hi\"}]}\n\ndata: {not json\n\ndata: [DONE]\n\n"),
        3 => sse(b"data: {\"choices\":[{\"text\":\"hi\"}]}\n\n"),
        4 => sse(b"data: {\"error\":{\"message\":\"engine failed\"}}\n\ndata: [DONE]\n\n"),
        5 => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"choices":[{"text":"not streamed"}]}"#)),
        _ => sse(b"data: {\"choices\":[{\"text\":\"\xff\xfe\"}]}\n\ndata: [DONE]\n\n"),
    };
    response.expect("a valid response")
}

/// The bad server on 127.0.0.1:0; it runs until the test's runtime ends.
async fn bad_server() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .route("/v1/completions", axum::routing::post(bad_completions))
        .with_state(seen.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_are_counted_failures_by_reason() {
    let (url, seen) = bad_server().await;
    let args = Args {
        model: Some("m".into()),
        num_prompts: 14,
        max_concurrency: Some(3),
        traceparent: true,
        ..args(&url)
    };
    let run = bench(&args, &ProgressBar::hidden())
        .await
        .expect("the run completes");
    assert_eq!(seen.requests.load(Ordering::SeqCst), 14);
    let s = &run.summary;
    assert_eq!((s.completed, s.failed), (2, 12));
    let failures: Vec<(&str, usize)> = s.failures.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        failures,
        [
            ("HTTP 500", 2),
            ("error in stream", 2),
            ("malformed chunk", 4),
            ("stream ended without [DONE]", 4),
        ]
    );
    // The good answers: two content chunks, the length finish gives `max_tokens`.
    assert_eq!(s.total_output_tokens, 2 * 8);
    let details: BTreeSet<&str> = run
        .results
        .iter()
        .filter_map(|r| r.outcome.as_ref().err())
        .filter(|f| matches!(f.kind, FailureKind::Status(_) | FailureKind::StreamError))
        .map(|f| f.detail.as_str())
        .collect();
    assert_eq!(details, BTreeSet::from(["boom", "engine failed"]));
    // Every request carried its own traceparent, and the result keeps its trace id.
    let sent: BTreeSet<String> = seen
        .traceparents
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|t| t.split('-').nth(1).expect("a trace id").to_owned())
        .collect();
    let recorded: BTreeSet<String> = run
        .results
        .iter()
        .map(|r| r.trace_id.clone().expect("a trace id"))
        .collect();
    assert_eq!(sent.len(), 14);
    assert_eq!(sent, recorded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_is_not_there_fails_every_request_as_a_connection_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let args = Args {
        model: Some("m".into()),
        num_prompts: 3,
        ..args(&format!("http://127.0.0.1:{port}"))
    };
    let run = bench(&args, &ProgressBar::hidden())
        .await
        .expect("the run completes");
    assert_eq!((run.summary.completed, run.summary.failed), (0, 3));
    assert_eq!(run.summary.failures["connection error"], 3);
    assert_eq!(run.summary.ttft, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_model_list_the_run_asks_for_a_model() {
    let (url, seen) = bad_server().await;
    let e = bench(&args(&url), &ProgressBar::hidden())
        .await
        .expect_err("no model to send");
    let message = format!("{e:#}");
    assert!(
        message.contains("/v1/models") && message.contains("404"),
        "{message}"
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
}
