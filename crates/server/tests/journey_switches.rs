//! Journey tracing off: no span is made and no carrier travels, even for a request that
//! arrives with a `traceparent`.

mod common;
mod journey_support;

use axum::http::StatusCode;
use serde_json::json;

use common::{Options, TestServer};
use journey_support::{CLIENT_SPAN, CLIENT_TRACE, chat, post_with};

#[tokio::test]
async fn with_tracing_off_no_span_is_made_and_no_carrier_travels() {
    let server = TestServer::new(&Options {
        record_journey: true,
        ..Options::default()
    });
    assert!(server.state.tracing().is_none());
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = server
        .call(post_with(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 2})),
            &[("traceparent", &traceparent)],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    server.wait_idle().await;
    let journey = server.journey.as_ref().expect("recorded");
    assert!(!journey.events().is_empty());
    assert!(journey.events().iter().all(|e| e.carrier.is_empty()));
}
