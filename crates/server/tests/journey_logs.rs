//! The log lines written while serving a traced request carry its trace id. Alone in its test
//! binary: `tracing` caches per call site whether anyone listens, and a test running beside it
//! without a subscriber would make that cache say no. One test, run in turn at DEBUG and at
//! INFO, because the server looks at the most verbose level any subscriber enables.

mod common;
mod journey_support;

use axum::http::StatusCode;
use serde_json::json;
use tracing::Level;

use common::{Options, Reply, TestServer};
use journey_support::{CLIENT_SPAN, CLIENT_TRACE, Mode, chat, post_with, traced};

#[tokio::test(flavor = "current_thread")]
async fn log_lines_of_a_traced_request_carry_its_trace_id() {
    at_debug_every_line_carries_it().await;
    at_info_a_failure_carries_it().await;
}

/// A chat request in the client's trace.
async fn traced_chat(server: &TestServer, stream: bool) -> Reply {
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    server
        .call(post_with(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 2, "stream": stream})),
            &[("traceparent", &traceparent)],
        ))
        .await
}

async fn at_debug_every_line_carries_it() {
    let logs = common::CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let server = traced(Mode::InProcess, Options::default()).await;
    for stream in [false, true] {
        let reply = traced_chat(&server, stream).await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let text = logs.text();
    let with_trace = |needle: &str| {
        text.lines()
            .filter(|l| l.contains(needle))
            .all(|l| l.contains(&format!("trace_id={CLIENT_TRACE}")))
            && text.contains(needle)
    };
    assert!(with_trace("api.handed_off"), "{text}");
    assert!(with_trace("api.departed"), "streaming too: {text}");
    assert!(text.contains("context injected"), "{text}");
    assert!(text.contains("parent_context=true"), "{text}");
}

/// At INFO (`serve`'s default) the request's future runs outside the log span, which would
/// cost every poll; a failure's line, written where the error is answered, carries the ids.
async fn at_info_a_failure_carries_it() {
    let logs = common::CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber_at(Level::INFO));
    let server = traced(
        Mode::InProcess,
        Options {
            fail_on_steps: vec![1, 2],
            ..Options::default()
        },
    )
    .await;
    for (stream, status) in [
        (false, StatusCode::INTERNAL_SERVER_ERROR),
        (true, StatusCode::OK),
    ] {
        let reply = traced_chat(&server, stream).await;
        assert_eq!(reply.status, status, "stream {stream}: {}", reply.text);
        server.wait_idle().await;
    }
    let text = logs.text();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("request failed"))
        .collect();
    assert_eq!(failures.len(), 2, "one line per failed request: {text}");
    for line in failures {
        assert!(line.contains(&format!("trace_id={CLIENT_TRACE}")), "{line}");
        assert!(line.contains("request_id=chatcmpl-"), "{line}");
    }
    assert!(
        !text.contains("api.handed_off"),
        "no DEBUG lines at INFO: {text}"
    );
}
