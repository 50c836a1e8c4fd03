//! What a hostile but fair user found (issue 17), each as a test: an engine panic is reported by
//! `/health` and recovered from.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::json;

use common::{MODEL, Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_panic_fails_its_requests_makes_health_503_and_the_engine_recovers() {
    let server = TestServer::new(&Options {
        panic_on_steps: vec![2],
        ..Options::default()
    });
    let body = json!({"model": MODEL, "prompt": "the sea", "max_tokens": 8});
    let reply = server.post("/v1/completions", &body).await;
    let error = reply.error(StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted")),
        "{error}"
    );
    assert_eq!(
        server.get("/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "unhealthy while it recovers"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.get("/health").await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "the engine did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reply = server.post("/v1/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let stats = server.wait_idle().await;
    assert_eq!(stats.num_free_blocks, stats.num_total_blocks);
}

#[tokio::test]
async fn stop_lists_are_bounded_with_a_clear_400() {
    let server = TestServer::default_server();
    let post = |stop: serde_json::Value| {
        let body = json!({"model": MODEL, "prompt": "x", "max_tokens": 2, "stop": stop});
        let server = server.clone();
        async move { server.post("/v1/completions", &body).await }
    };
    let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
    let e = post(json!(many)).await.error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "stop");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("at most 64")),
        "{e}"
    );
    let e = post(json!(["y".repeat(1025)]))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("1024")),
        "{e}"
    );
    // The limits themselves are accepted.
    let at_limit: Vec<String> = (0..64)
        .map(|i| format!("{i}{}", "z".repeat(1000)))
        .collect();
    assert_eq!(post(json!(at_limit)).await.status, StatusCode::OK);
}

#[tokio::test]
async fn more_choices_than_the_server_can_ever_hold_is_400_not_429() {
    // 8 running + 32 waiting: 3 prompts × n = 16 can never be admitted.
    let server = TestServer::default_server();
    let body = json!({"model": MODEL, "prompt": ["a", "b", "c"], "n": 16, "max_tokens": 1});
    let e = server
        .post("/v1/completions", &body)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["param"], "n");
    server.wait_idle().await;
}

#[tokio::test]
async fn a_prompt_that_cannot_fit_is_refused_by_its_length_before_tokenizing() {
    let server = TestServer::new(&Options {
        max_body_bytes: 4 << 20,
        ..Options::default()
    });
    // 256 tokens of context: 2 MB of text cannot fit, whatever it tokenizes to.
    let huge = "x".repeat(2 << 20);
    let body = json!({"model": MODEL, "prompt": huge, "max_tokens": 1});
    let e = server
        .post("/v1/completions", &body)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("bytes of text")),
        "{e}"
    );
    let chat = json!({"model": MODEL, "messages": [{"role": "user", "content": huge}]});
    let e = server
        .post("/v1/chat/completions", &chat)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    assert_eq!(e["param"], "messages", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_two_huge_prompts_are_tokenized() {
    // A context long enough that 2 MB prompts must be tokenized before they can be judged.
    let server = TestServer::new(&Options {
        max_body_bytes: 4 << 20,
        max_model_len: 1 << 20,
        num_blocks: (1 << 20) / common::BLOCK_SIZE,
        ..Options::default()
    });
    let heavy: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            let body = json!({"model": MODEL, "prompt": format!("{i} {}", "sea and wind ".repeat(160_000)),
                              "max_tokens": 1});
            tokio::spawn(async move { server.post("/v1/completions", &body).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let start = Instant::now();
        assert_eq!(server.get("/health").await.status, StatusCode::OK);
        slowest = slowest.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Generous for a loaded CI machine; before, tokenizing on the async workers held /health
    // for seconds.
    assert!(
        slowest < Duration::from_millis(500),
        "/health took {slowest:?}"
    );
    for h in heavy {
        h.abort();
    }
}
