//! The journey on the wire: a real OTLP receiver (gRPC and HTTP/protobuf) started in the test
//! receives both spans of a request sent with a `traceparent`, in the client's trace, parent
//! and child; and with the collector unreachable or refusing, requests still succeed and the
//! drops are counted.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;
use wayfinder_testkit::{OtlpReceiver, ReceivedSpan};
use wayfinder_trace::names::{SPAN_CORE, SPAN_REQUEST, attr, scope};
use wayfinder_trace::{ExportStats, ProcessRole, Telemetry, TracingConfig};

use common::{MODEL, Options, TestServer};

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn server_exporting_to(endpoint: String, protocol: &str) -> TestServer {
    server_exporting_with_env(endpoint, protocol, |_| None)
}

/// A server exporting to `endpoint`, the `OTEL_*` variables read from `env`.
fn server_exporting_with_env(
    endpoint: String,
    protocol: &str,
    env: impl Fn(&str) -> Option<String> + Sync,
) -> TestServer {
    let config = TracingConfig {
        endpoint: Some(endpoint),
        protocol: Some(protocol.to_owned()),
        service_name: Some("wayfinder-wire-test".to_owned()),
        role: ProcessRole::All,
        export_timeout: Duration::from_secs(2),
        shutdown_timeout: Duration::from_secs(2),
        ..TracingConfig::default()
    };
    let telemetry = Telemetry::otlp_with_env(&config, env).expect("an OTLP provider");
    TestServer::new(&Options {
        telemetry: Some(telemetry),
        ..Options::default()
    })
}

async fn traced_request(server: &TestServer) {
    let request = Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .body(Body::from(
            json!({"model": MODEL, "max_tokens": 3, "temperature": 0.01, "top_p": 0.1,
                   "messages": [{"role": "user", "content": "hello"}]})
            .to_string(),
        ))
        .expect("request");
    let reply = server.call(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    server.wait_idle().await;
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.name() == name).collect();
    assert_eq!(found.len(), 1, "one {name} received");
    found[0]
}

fn check_received(spans: &[ReceivedSpan], transport: &str) {
    assert_eq!(spans.len(), 2, "{spans:?}");
    let request = by_name(spans, SPAN_REQUEST);
    let core = by_name(spans, SPAN_CORE);
    for s in spans {
        assert_eq!(s.transport, transport);
        assert_eq!(s.trace_id(), CLIENT_TRACE, "the client's trace");
        assert!(
            matches!(s.resource_attribute("service.name"), Some(Value::StringValue(n)) if n == "wayfinder-wire-test")
        );
        assert!(matches!(
            s.resource_attribute("process.pid"),
            Some(Value::IntValue(pid)) if *pid == i64::from(std::process::id())
        ));
        assert!(matches!(
            s.resource_attribute(attr::PROCESS_ROLE),
            Some(Value::StringValue(r)) if r == "all"
        ));
        assert!(s.resource_attribute("service.version").is_some());
    }
    assert_eq!(request.scope, scope::API);
    assert_eq!(core.scope, scope::SCHEDULER);
    assert_eq!(
        request.parent_span_id(),
        CLIENT_SPAN,
        "llm_request's parent is the client span"
    );
    assert_eq!(
        core.parent_span_id(),
        request.span_id(),
        "llm_core's parent is llm_request"
    );
    // Numbers arrive exactly as the client sent them, not as their nearest f32.
    assert_eq!(
        request.attribute(attr::TEMPERATURE),
        Some(&Value::DoubleValue(0.01))
    );
    assert_eq!(
        request.attribute(attr::TOP_P),
        Some(&Value::DoubleValue(0.1))
    );
    assert_eq!(
        request.attribute(attr::CACHE_READ_INPUT_TOKENS),
        Some(&Value::IntValue(0))
    );
    assert_eq!(
        core.attribute(attr::CHOICE_INDEX),
        Some(&Value::IntValue(0))
    );
    assert_eq!(
        request.event_names(),
        [
            "api.ARRIVED",
            "api.HANDOFF_TO_CORE",
            "api.FIRST_RESPONSE_FROM_CORE",
            "api.DEPARTED"
        ]
    );
    assert_eq!(
        core.event_names(),
        [
            "journey.QUEUED",
            "journey.SCHEDULED",
            "journey.FIRST_TOKEN",
            "journey.FINISHED"
        ]
    );
}

/// A traced request to a server exporting over `protocol` to a fresh receiver: both spans
/// arrive by `transport`, every one exported and none lost.
async fn both_spans_arrive(protocol: &str, transport: &str) {
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let endpoint = match transport {
        "grpc" => receiver.grpc_endpoint(),
        _ => receiver.http_endpoint(),
    };
    let server = server_exporting_to(endpoint, protocol);
    traced_request(&server).await;
    let telemetry = server.telemetry.clone().expect("tracing on");
    tokio::task::spawn_blocking(move || telemetry.force_flush())
        .await
        .expect("flush");
    let spans = receiver.wait_for(2, Duration::from_secs(10)).await;
    check_received(&spans, transport);
    let stats = server.telemetry.as_ref().expect("on").stats();
    assert_eq!((stats.exported, stats.failed), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_spans_arrive_over_grpc_in_the_clients_trace() {
    both_spans_arrive("grpc", "grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_spans_arrive_over_http_protobuf_in_the_clients_trace() {
    both_spans_arrive("http/protobuf", "http").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_unreachable_requests_succeed_and_drops_are_counted() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    for protocol in ["grpc", "http/protobuf"] {
        let server = server_exporting_to(format!("http://127.0.0.1:{port}"), protocol);
        for _ in 0..3 {
            traced_request(&server).await;
        }
        let stats = shut_down(server.telemetry.clone().expect("tracing on")).await;
        assert_eq!(stats.ended, 6, "{protocol}: every span was ended");
        assert_eq!(stats.exported, 0, "{protocol}");
        assert_eq!(
            stats.failed, 6,
            "{protocol}: every span is counted as dropped"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_a_collector_refuses_are_counted_as_failed() {
    // The collector answers: gRPC RESOURCE_EXHAUSTED (a trailers-only answer), HTTP 503.
    let receiver = OtlpReceiver::start_refusing().await.expect("receiver");
    for (protocol, endpoint) in [
        ("grpc", receiver.grpc_endpoint()),
        ("http/protobuf", receiver.http_endpoint()),
    ] {
        let server = server_exporting_to(endpoint, protocol);
        traced_request(&server).await;
        traced_request(&server).await;
        let stats = shut_down(server.telemetry.clone().expect("tracing on")).await;
        assert_eq!(stats.ended, 4, "{protocol}");
        assert_eq!(
            stats.exported, 0,
            "{protocol}: refused spans are not exported"
        );
        assert_eq!(stats.failed, 4, "{protocol}: refused spans are counted");
    }
    assert_eq!(receiver.num_spans(), 0);
}

/// Shuts `telemetry` down (flushing what is queued) and returns its span counts.
async fn shut_down(telemetry: Telemetry) -> ExportStats {
    tokio::task::spawn_blocking(move || {
        telemetry.shutdown();
        telemetry.stats()
    })
    .await
    .expect("shutdown")
}

/// A provider of its own exporting to `endpoint` over `protocol`, after `n` `llm_request`
/// spans (ids `chatcmpl-0`, …) were made and ended through it.
fn request_spans(endpoint: String, protocol: &str, n: usize) -> Telemetry {
    let telemetry = Telemetry::otlp(&TracingConfig {
        endpoint: Some(endpoint),
        protocol: Some(protocol.to_owned()),
        ..TracingConfig::default()
    })
    .expect("an OTLP provider");
    let headers = axum::http::HeaderMap::new();
    for i in 0..n {
        let span = telemetry
            .start_request(&headers, &format!("chatcmpl-{i}"), "chat")
            .expect("sampled");
        span.departed();
    }
    telemetry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_export_batches_arrive_whole_over_grpc() {
    // 600 request spans: a full export batch of 512 (~550 KiB of protobuf), then one of 88.
    let receiver = OtlpReceiver::start().await.expect("receiver");
    let telemetry = request_spans(receiver.grpc_endpoint(), "grpc", 600);
    let t = telemetry.clone();
    tokio::task::spawn_blocking(move || t.force_flush())
        .await
        .expect("flush");
    let spans = receiver.wait_for(600, Duration::from_secs(10)).await;
    assert_eq!(spans.len(), 600);
    let mut ids: Vec<String> = spans
        .iter()
        .map(|s| match s.attribute(attr::REQUEST_ID) {
            Some(Value::StringValue(id)) => id.clone(),
            other => panic!("no request id: {other:?}"),
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 600, "every span once");
    let stats = telemetry.stats();
    assert_eq!((stats.exported, stats.failed), (600, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_benchmarks_counting_receiver_counts_what_arrives() {
    // The tracing benchmark's receiver counts spans without decoding them; over both
    // transports it must count exactly what was exported.
    let receiver = OtlpReceiver::start_counting().await.expect("receiver");
    let mut expected = 0;
    for (protocol, endpoint) in [
        ("grpc", receiver.grpc_endpoint()),
        ("http/protobuf", receiver.http_endpoint()),
    ] {
        let t = request_spans(endpoint, protocol, 700);
        let stats = shut_down(t).await;
        expected += 700;
        assert_eq!((stats.exported, stats.failed), (700, 0), "{protocol}");
        assert_eq!(receiver.num_spans(), expected, "{protocol}");
    }
}

/// Over TLS (a self-signed certificate trusted through `OTEL_EXPORTER_OTLP_CERTIFICATE`) and
/// gzip (`OTEL_EXPORTER_OTLP_COMPRESSION`), both spans arrive over each transport; without the
/// certificate the same exports fail (the certificate is really checked) and are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_tls_and_gzip_when_the_certificate_is_trusted() {
    let receiver = OtlpReceiver::start_tls().await.expect("TLS receiver");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, receiver.certificate().expect("a certificate")).expect("write");
    let ca = ca.to_string_lossy().into_owned();
    for (protocol, transport, endpoint) in [
        ("grpc", "grpc", receiver.grpc_endpoint()),
        ("http/protobuf", "http", receiver.http_endpoint()),
    ] {
        let before = receiver.num_spans();
        let ca = ca.clone();
        let server = server_exporting_with_env(endpoint.clone(), protocol, move |k| match k {
            "OTEL_EXPORTER_OTLP_CERTIFICATE" => Some(ca.clone()),
            "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("gzip".to_owned()),
            _ => None,
        });
        traced_request(&server).await;
        let stats = shut_down(server.telemetry.clone().expect("tracing on")).await;
        assert_eq!((stats.exported, stats.failed), (2, 0), "{protocol}");
        let spans = receiver.wait_for(before + 2, Duration::from_secs(10)).await;
        let spans = &spans[before..];
        check_received(spans, transport);
        assert!(spans.iter().all(|s| s.gzip), "{protocol}: gzip bodies");

        // The same without trusting the certificate: nothing gets through.
        let untrusting = server_exporting_with_env(endpoint, protocol, |_| None);
        traced_request(&untrusting).await;
        let stats = shut_down(untrusting.telemetry.clone().expect("tracing on")).await;
        assert_eq!((stats.exported, stats.failed), (0, 2), "{protocol}");
    }
    assert_eq!(receiver.num_spans(), 4);
}
