//! The journey history and `/journeys` (issue 18): every request's journey with the engine's
//! events, in both engine modes; bounded at N; in-flight requests listed; the page and its API
//! behind the API key as the contract says.

mod common;
mod journey_support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};

use common::{MODEL, Options, TestServer};
use journey_support::{Mode, server};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

async fn api(server: &TestServer, query: &str) -> Value {
    let reply = server.get(&format!("/journeys/api{query}")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json()
}

fn names(record: &Value) -> Vec<String> {
    record["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            format!(
                "{}{}",
                e["name"].as_str().unwrap_or(""),
                e["detail"]
                    .as_str()
                    .map(|d| format!(" {d}"))
                    .unwrap_or_default()
            )
        })
        .collect()
}

async fn journeys_with_engine_events(mode: Mode) {
    // A small KV pool (4 blocks of 16) and four growing requests: some are preempted.
    let server = server(
        mode,
        Options {
            num_blocks: 8,
            max_model_len: 128,
            step_delay: Duration::from_millis(2),
            ..Options::default()
        },
    )
    .await;
    let posts = (0..4).map(|i| {
        let body = json!({"model": MODEL, "prompt": format!("story {i}"), "max_tokens": 40});
        let server = server.clone();
        async move { server.post("/v1/completions", &body).await }
    });
    let replies = futures_util::future::join_all(posts).await;
    let ids: Vec<String> = replies
        .iter()
        .map(|r| r.json()["id"].as_str().expect("id").to_owned())
        .collect();
    server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "temperature": 7}),
        )
        .await
        .error(StatusCode::BAD_REQUEST);
    let data = api(&server, "").await;
    let recent = data["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), 5, "{data}");
    assert_eq!(recent[0]["status"], "failed", "newest first");
    let mut preemptions = 0;
    for id in &ids {
        let r = recent
            .iter()
            .find(|r| r["id"] == id.as_str())
            .expect("listed");
        assert_eq!(r["status"], "departed");
        assert_eq!(r["completion_tokens"], 40);
        let events = names(r);
        for must in [
            "arrived",
            "handed_off",
            "QUEUED",
            "SCHEDULED FIRST",
            "FIRST_TOKEN",
            "first_output",
            "FINISHED length",
            "departed",
        ] {
            assert!(events.iter().any(|e| e == must), "{must} in {events:?}");
        }
        let n = r["preemptions"].as_u64().expect("count");
        let preempted = events.iter().filter(|e| e.starts_with("PREEMPTED")).count() as u64;
        let resumed = events.iter().filter(|e| *e == "SCHEDULED RESUME").count() as u64;
        assert_eq!((preempted, resumed), (n, n), "{events:?}");
        preemptions += n;
        let ts: Vec<f64> = r["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| e["t"].as_f64().expect("t"))
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        assert!(r["e2e_s"].as_f64().is_some() && r["ttft_s"].as_f64().is_some());
    }
    assert!(preemptions > 0, "the small pool must preempt");
    let errors = api(&server, "?status=error").await;
    assert_eq!(errors["recent"].as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_with_the_engines_events_in_process() {
    journeys_with_engine_events(Mode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journeys_with_the_engines_events_with_an_engine_process() {
    journeys_with_engine_events(Mode::EngineProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_bounded_and_lists_requests_in_flight_in_process() {
    bounded_and_in_flight(Mode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_bounded_and_lists_requests_in_flight_with_an_engine_process() {
    bounded_and_in_flight(Mode::EngineProcess).await;
}

async fn bounded_and_in_flight(mode: Mode) {
    let server = server(
        mode,
        Options {
            journey_history: 20,
            step_delay: Duration::from_millis(2),
            ..Options::default()
        },
    )
    .await;
    for i in 0..120 {
        server
            .post(
                "/v1/completions",
                &json!({"model": MODEL, "prompt": format!("p{i}"), "max_tokens": 1}),
            )
            .await;
    }
    let data = api(&server, "?limit=1000").await;
    assert_eq!(
        data["recent"].as_array().map(Vec::len),
        Some(20),
        "N + 100 requests keep N"
    );
    let long = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .post(
                    "/v1/completions",
                    &json!({"model": MODEL, "prompt": "long", "max_tokens": 150}),
                )
                .await
        })
    };
    let mut seen = false;
    for _ in 0..200 {
        let data = api(&server, "").await;
        if let Some(r) = data["in_flight"].as_array().and_then(|a| a.first()) {
            assert_eq!(r["status"], "in_flight");
            // Listed from its arrival; handed off once validated on the blocking pool.
            if names(r).iter().any(|e| e == "handed_off") {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(seen, "the running request is listed in flight, handed off");
    long.await.expect("task");
    let off = TestServer::new(&Options {
        journey_history: 0,
        ..Options::default()
    });
    off.post(
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "q", "max_tokens": 1}),
    )
    .await;
    let data = api(&off, "").await;
    assert_eq!(data["enabled"], false);
    assert_eq!(data["recent"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn the_page_is_served_whole_and_the_api_asks_for_the_key() {
    let server = TestServer::new(&Options {
        api_key: Some("k".into()),
        trace_url_template: Some("http://jaeger/trace/{trace_id}".into()),
        ..Options::default()
    });
    let page = server.get("/journeys").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text.contains("Request journeys") && page.text.contains("/journeys/api"));
    assert!(
        !page.text.contains("<script src") && !page.text.contains("<link"),
        "no CDN: everything inline"
    );
    server
        .get("/journeys/api")
        .await
        .error(StatusCode::UNAUTHORIZED);
    let reply = server
        .call(
            Request::get("/journeys/api")
                .header("authorization", "Bearer k")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.json()["trace_url_template"],
        "http://jaeger/trace/{trace_id}"
    );
    // /metrics and /health stay open.
    assert_eq!(server.get("/metrics").await.status, StatusCode::OK);
    assert_eq!(server.get("/health").await.status, StatusCode::OK);
}
