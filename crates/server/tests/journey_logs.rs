//! The log lines written while serving a traced request carry its trace id. Alone in its test
//! binary: `tracing` caches per call site whether anyone listens, and a test running beside it
//! without a subscriber would make that cache say no.

mod common;
mod journey_support;

use axum::http::StatusCode;
use serde_json::json;

use common::Options;
use journey_support::{CLIENT_SPAN, CLIENT_TRACE, Mode, chat, post_with, traced};

#[tokio::test(flavor = "current_thread")]
async fn log_lines_of_a_traced_request_carry_its_trace_id() {
    let logs = common::CapturedLogs::default();
    let _guard = tracing::subscriber::set_default(logs.subscriber());
    let server = traced(Mode::InProcess, Options::default()).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    for stream in [false, true] {
        let reply = server
            .call(post_with(
                "/v1/chat/completions",
                &chat(&json!({"max_tokens": 2, "stream": stream})),
                &[("traceparent", &traceparent)],
            ))
            .await;
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
