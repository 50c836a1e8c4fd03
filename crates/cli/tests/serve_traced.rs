//! `wayfinder serve --enable-journey-tracing`, the real binary on the demo model, with the
//! engine in process and in an `engine-core` child: a request sent with a `traceparent` leaves
//! both spans, in the client's trace, at a real OTLP receiver; SIGTERM stops the child and
//! flushes both processes' spans.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::json;
use wayfinder_testkit::OtlpReceiver;

const CLIENT_TRACE: &str = "5b8efff798038103d269b633813fc60c";
const CLIENT_SPAN: &str = "eee19b7ec3c1b174";

/// Kills the server if the test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exports_both_spans_of_a_traced_request_and_flushes_on_sigterm() {
    traced_serve(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_engine_process_both_processes_export_and_flush_on_sigterm() {
    traced_serve(true).await;
}

async fn traced_serve(engine_process: bool) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let cache = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    command.args(["serve", "demo", "--port", "0", "--num-kv-blocks", "64"]);
    if engine_process {
        command.arg("--engine-process");
    }
    let mut child = command
        .args(["--enable-journey-tracing", "--otlp-traces-endpoint"])
        .arg(receiver.grpc_endpoint())
        .args(["--otlp-service-name", "cli-test"])
        .env("WAYFINDER_CACHE", cache.path())
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("wayfinder serve starts");
    let stderr = child.stderr.take().expect("piped");
    let server = Server(child);
    // Read the log on a thread; hand over the address once it is serving.
    let (tx, rx) = mpsc::channel::<String>();
    let log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("serving the OpenAI API")
                && let Some(at) = line.find("address=http://")
            {
                let addr = line[at + "address=".len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let _ = tx.send(addr);
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let base = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
        .await
        .expect("join")
        .expect("the server says where it listens");

    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "demo", "max_tokens": 4,
                      "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("the request is answered");
    assert_eq!(response.status(), 200);

    // SIGTERM: graceful shutdown flushes the spans.
    let pid = i32::try_from(server.0.id()).expect("pid");
    // SAFETY: sending a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let log = tokio::task::spawn_blocking(move || log.join().expect("log thread"))
        .await
        .expect("join");
    let spans = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 2, "{log}");
    let names: Vec<&str> = spans.iter().map(|s| s.name()).collect();
    assert!(
        names.contains(&"llm_request") && names.contains(&"llm_core"),
        "{names:?}"
    );
    for s in &spans {
        assert_eq!(s.trace_id(), CLIENT_TRACE);
    }
    let request = spans
        .iter()
        .find(|s| s.name() == "llm_request")
        .expect("api span");
    let core = spans
        .iter()
        .find(|s| s.name() == "llm_core")
        .expect("core span");
    assert_eq!(request.parent_span_id(), CLIENT_SPAN);
    assert_eq!(core.parent_span_id(), request.span_id());
    assert!(
        log.contains("journey tracing: tracer provider made"),
        "{log}"
    );
    assert!(log.contains("every span exported"), "{log}");
    if engine_process {
        // The engine child removed its socket on the way out.
        let socket = std::env::temp_dir().join(format!("wayfinder-engine-{pid}.sock"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while socket.exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} left behind",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
