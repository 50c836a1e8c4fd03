//! `GET /metrics` after a known set of requests (issue 18): counts equal what was sent, in both
//! engine modes; OpenMetrics exemplars point at the `llm_request` spans a real OTLP receiver
//! got, and there are none for requests sampled out.

mod common;
mod journey_support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use wayfinder_trace::TracingConfig;

use common::{MODEL, Options, TestServer};
use journey_support::{Mode, server};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

async fn scrape(server: &TestServer, openmetrics: bool) -> String {
    let mut request = Request::get("/metrics");
    if openmetrics {
        request = request.header("accept", "application/openmetrics-text; version=1.0.0");
    }
    let reply = server
        .call(request.body(Body::empty()).expect("request"))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    reply.text
}

/// The value of the sample whose name and labels start with `prefix` (labels in the order the
/// server writes them: `model_name` first); it must be there.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split(" # ").next()?.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in:\n{text}"))
}

fn m(name: &str) -> String {
    format!("wayfinder:{name}{{model_name=\"{MODEL}\"")
}

async fn counts_what_was_sent(mode: Mode) {
    let server = server(
        mode,
        Options {
            step_delay: Duration::from_millis(2),
            ..Options::default()
        },
    )
    .await;
    let mut usage = (0u64, 0u64);
    let mut add = |v: &Value| {
        usage.0 += v["usage"]["prompt_tokens"].as_u64().expect("usage");
        usage.1 += v["usage"]["completion_tokens"].as_u64().expect("usage");
    };
    let plain = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "the sea", "max_tokens": 5}),
        )
        .await;
    add(&plain.json());
    let chat = server
        .post(
            "/v1/chat/completions",
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 3, "n": 2}),
        )
        .await;
    add(&chat.json());
    let streamed = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "waves", "max_tokens": 4, "stream": true,
                    "stream_options": {"include_usage": true}}),
        )
        .await;
    let last: Value = streamed
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .next_back()
        .expect("a usage chunk");
    add(&last);
    server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "temperature": 9}),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    server.wait_idle().await;

    let text = scrape(&server, false).await;
    let reason = |r: &str| {
        sample(
            &text,
            &format!("{},finished_reason=\"{r}\"}}", m("request_success_total")),
        )
    };
    assert_eq!(reason("length"), 4.0, "{text}");
    assert_eq!(
        sample(&text, &m("generation_tokens_total")),
        usage.1 as f64,
        "{text}"
    );
    assert_eq!(
        sample(&text, &m("prompt_tokens_total")),
        usage.0 as f64,
        "{text}"
    );
    assert_eq!(usage.1, 5 + 2 * 3 + 4);
    for h in [
        "e2e_request_latency_seconds",
        "time_to_first_token_seconds",
        "request_queue_time_seconds",
        "request_prompt_tokens",
        "request_generation_tokens",
    ] {
        assert_eq!(sample(&text, &m(&format!("{h}_count"))), 3.0, "{h}: {text}");
    }
    assert_eq!(
        sample(&text, &m("request_generation_tokens_sum")),
        usage.1 as f64
    );
    // Inter-token gaps: one fewer than tokens, per choice.
    assert_eq!(
        sample(&text, &m("inter_token_latency_seconds_count")),
        (4 + 2 * 2 + 3) as f64
    );
    assert_eq!(sample(&text, &m("kv_cache_usage_perc")), 0.0);
    assert_eq!(sample(&text, &m("num_requests_running")), 0.0);
    let failed = text
        .lines()
        .find(|l| {
            l.starts_with("gen_ai_server_request_duration_seconds_count")
                && l.contains("error_type=\"400\"")
        })
        .expect("the 400 is in the GenAI duration");
    assert!(failed.ends_with(" 1"), "{failed}");
    assert!(
        text.contains("# TYPE wayfinder:request_success_total counter"),
        "{text}"
    );
    assert!(!text.contains("# EOF"));

    // An abort: the client goes away mid-generation.
    let body = json!({"model": MODEL, "prompt": "long", "max_tokens": 200});
    let _ = tokio::time::timeout(
        Duration::from_millis(60),
        server.post("/v1/completions", &body),
    )
    .await;
    server.wait_idle().await;
    let text = scrape(&server, false).await;
    let reason = |r: &str| {
        sample(
            &text,
            &format!("{},finished_reason=\"{r}\"}}", m("request_success_total")),
        )
    };
    assert_eq!(reason("abort"), 1.0, "{text}");
    assert_eq!(sample(&text, &m("e2e_request_latency_seconds_count")), 4.0);
    assert!(sample(&text, &m("generation_tokens_total")) > usage.1 as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_in_process() {
    counts_what_was_sent(Mode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_sent_with_an_engine_process() {
    counts_what_was_sent(Mode::EngineProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exemplars_point_at_the_llm_request_spans_and_only_of_sampled_requests() {
    let server = server(
        Mode::EngineProcess,
        Options {
            tracing: Some(TracingConfig::default()),
            ..Options::default()
        },
    )
    .await;
    for i in 0..3 {
        server
            .post(
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 3}),
            )
            .await;
    }
    let receiver = server.receiver.clone().expect("a receiver");
    let spans = receiver.wait_for(6, Duration::from_secs(20)).await;
    let request_spans: Vec<(String, String)> = spans
        .iter()
        .filter(|s| s.name() == "llm_request")
        .map(|s| (s.trace_id(), s.span_id()))
        .collect();
    assert_eq!(request_spans.len(), 3);
    let text = scrape(&server, true).await;
    assert!(text.ends_with("# EOF\n"), "{text}");
    for h in [
        "time_to_first_token_seconds",
        "e2e_request_latency_seconds",
        "request_queue_time_seconds",
    ] {
        let exemplars: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(&format!("wayfinder:{h}_bucket")) && l.contains(" # {"))
            .collect();
        assert!(!exemplars.is_empty(), "{h}: {text}");
        for line in exemplars {
            let ids = request_spans.iter().any(|(t, s)| {
                line.contains(&format!("trace_id=\"{t}\""))
                    && line.contains(&format!("span_id=\"{s}\""))
            });
            assert!(ids, "{h}: an exemplar of no exported llm_request: {line}");
        }
    }

    // Sampled out: no exemplars at all.
    let unsampled = TestServer::new(&Options {
        tracing: Some(TracingConfig {
            sample_rate: 0.0,
            ..TracingConfig::default()
        }),
        ..Options::default()
    });
    unsampled
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "q", "max_tokens": 2}),
        )
        .await;
    let text = scrape(&unsampled, true).await;
    assert!(
        sample(&text, &m("e2e_request_latency_seconds_count")) == 1.0,
        "{text}"
    );
    assert!(!text.contains(" # {"), "{text}");
}
