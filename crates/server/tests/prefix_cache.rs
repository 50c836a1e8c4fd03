//! The prefix cache as clients, traces and metrics see it (issue 19), in both engine modes:
//! `usage.prompt_tokens_details.cached_tokens` (streaming usage chunk too), the `llm_request`
//! span's `gen_ai.usage.cache_read.input_tokens`, `prefix_cache.hit_tokens` on
//! `journey.SCHEDULED` (FIRST), and the `wayfinder:prefix_cache_*` counters, all exact.

mod common;
mod journey_support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use wayfinder_trace::names::{SPAN_CORE, SPAN_REQUEST, attr};

use common::{BLOCK_SIZE, MODEL, Options};
use journey_support::{Mode, event_int, event_str, int, named, spans, traced};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_are_reported_exactly_in_process() {
    cached_tokens_are_reported_exactly(Mode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_are_reported_exactly_with_an_engine_process() {
    cached_tokens_are_reported_exactly(Mode::EngineProcess).await;
}

fn cached(v: &Value) -> u64 {
    v["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no cached_tokens in {v}"))
}

async fn cached_tokens_are_reported_exactly(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let prompt = "the sea was calm and the ships sailed on under the grey morning sky, \
                  past the harbour wall and the lighthouse, towards the open water";
    let body = |extra: Value| {
        let mut b = json!({"model": MODEL, "prompt": prompt, "max_tokens": 3});
        for (k, v) in extra.as_object().expect("object") {
            b[k] = v.clone();
        }
        b
    };
    let first = server
        .post("/v1/completions", &body(json!({})))
        .await
        .json();
    let len = first["usage"]["prompt_tokens"].as_u64().expect("usage");
    assert!(
        len > 2 * BLOCK_SIZE as u64,
        "the prompt fills blocks ({len} tokens)"
    );
    assert_eq!(cached(&first), 0, "nothing was cached before");
    // All but the last prompt token may come from the cache, in whole blocks.
    let expect = (len - 1) / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
    let again = server
        .post("/v1/completions", &body(json!({})))
        .await
        .json();
    assert_eq!(cached(&again), expect, "{again}");
    let streamed = server
        .post(
            "/v1/completions",
            &body(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    let usage: Value = streamed
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .next_back()
        .expect("a usage chunk");
    assert_eq!(cached(&usage), expect, "{usage}");
    // Two choices of one prompt: usage counts the prompt once, the span sums the choices.
    let two = server
        .post("/v1/completions", &body(json!({"n": 2})))
        .await
        .json();
    assert_eq!(two["usage"]["prompt_tokens"].as_u64(), Some(len));
    assert_eq!(cached(&two), expect, "{two}");

    let spans = spans(&server, 4 + 5).await;
    let mut reads: Vec<i64> = named(&spans, SPAN_REQUEST)
        .iter()
        .map(|s| int(s, attr::CACHE_READ_INPUT_TOKENS))
        .collect();
    reads.sort_unstable();
    let e = expect as i64;
    assert_eq!(reads, [0, e, e, 2 * e]);
    let mut hits: Vec<i64> = named(&spans, SPAN_CORE)
        .iter()
        .map(|s| {
            let scheduled: Vec<_> = s
                .events
                .events
                .iter()
                .filter(|ev| ev.name == "journey.SCHEDULED")
                .collect();
            assert_eq!(event_str(scheduled[0], attr::SCHEDULE_KIND), "FIRST");
            event_int(scheduled[0], attr::PREFIX_CACHE_HIT_TOKENS)
        })
        .collect();
    hits.sort_unstable();
    assert_eq!(hits, [0, e, e, e, e]);

    let reply = server
        .call(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let sample = |name: &str| -> u64 {
        let prefix = format!("wayfinder:{name}{{model_name=\"{MODEL}\"}} ");
        reply
            .text
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{}", reply.text))
    };
    assert_eq!(
        sample("prefix_cache_queries_total"),
        5 * len,
        "one lookup per choice"
    );
    assert_eq!(sample("prefix_cache_hits_total"), 4 * expect);

    // The journey history keeps each request's cached tokens as its usage said.
    let history = server.get("/journeys/api?limit=10").await.json();
    let mut kept: Vec<u64> = history["recent"]
        .as_array()
        .expect("recent")
        .iter()
        .map(|r| r["cached_tokens"].as_u64().expect("cached_tokens"))
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, [0, expect, expect, expect]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_salt_keeps_tenants_apart_and_a_bad_one_is_refused() {
    let server = common::TestServer::new(&Options::default());
    let prompt = "one two three four five six seven eight nine ten eleven twelve thirteen \
                  fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let ask = |salt: Option<&str>| {
        let mut body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 2});
        if let Some(s) = salt {
            body["cache_salt"] = json!(s);
        }
        body
    };
    let first = server.post("/v1/completions", &ask(None)).await.json();
    let len = first["usage"]["prompt_tokens"].as_u64().expect("usage");
    let expect = (len - 1) / BLOCK_SIZE as u64 * BLOCK_SIZE as u64;
    assert!(expect > 0, "{len} tokens");
    let salted = server
        .post("/v1/completions", &ask(Some("tenant-a")))
        .await
        .json();
    assert_eq!(cached(&salted), 0, "another tenant's blocks are not read");
    let again = server
        .post("/v1/completions", &ask(Some("tenant-a")))
        .await
        .json();
    assert_eq!(cached(&again), expect);
    let chat = json!({"model": MODEL, "cache_salt": "",
                      "messages": [{"role": "user", "content": "hi"}]});
    for (path, body) in [
        ("/v1/completions", ask(Some(""))),
        ("/v1/chat/completions", chat),
    ] {
        let error = server
            .post(path, &body)
            .await
            .error(StatusCode::BAD_REQUEST);
        assert_eq!(error["param"], "cache_salt", "{error}");
    }
    let error = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "cache_salt": 5}),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("expected a string")),
        "{error}"
    );
}
