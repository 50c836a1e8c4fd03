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

mod connections {
    use std::time::{Duration, Instant};

    use axum::http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::common::{Options, Running};

    async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let mut buf = [0u8; 1024];
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_half_sent_connections_are_closed_after_the_timeout() {
        let running = Running::start(&Options {
            http_idle_timeout: Duration::from_millis(300),
            ..Options::default()
        })
        .await;
        let mut silent = TcpStream::connect(running.addr).await.expect("connect");
        let mut half = TcpStream::connect(running.addr).await.expect("connect");
        half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("sent");
        // A keep-alive connection that answered one request and then says nothing.
        let mut kept = TcpStream::connect(running.addr).await.expect("connect");
        kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("sent");
        for s in [&mut silent, &mut half, &mut kept] {
            assert!(
                closed_within(s, Duration::from_secs(5)).await,
                "closed by the server"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_idle_connections_cannot_lock_health_out() {
        let running = Running::start(&Options {
            http_idle_timeout: Duration::from_millis(300),
            max_connections: 4,
            ..Options::default()
        })
        .await;
        let idle: Vec<_> =
            futures_util::future::join_all((0..20).map(|_| TcpStream::connect(running.addr))).await;
        let health = reqwest::Client::new()
            .get(running.url("/health"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("/health answers once idle connections are closed");
        assert_eq!(health.status(), StatusCode::OK);
        drop(idle);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn oversized_headers_get_431_with_an_error_body() {
        let running = Running::start(&Options::default()).await;
        let mut s = TcpStream::connect(running.addr).await.expect("connect");
        let big = "y".repeat(100 << 10);
        let head = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        s.write_all(head.as_bytes()).await.expect("sent");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 431"), "{text}");
        assert!(text.contains("headers_too_large"), "{text}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_announced_body_over_the_limit_is_413_at_once() {
        let running = Running::start(&Options::default()).await;
        let mut s = TcpStream::connect(running.addr).await.expect("connect");
        // Announces 100 MB and sends none of it: the answer must not wait for the body.
        s.write_all(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100000000\r\n\r\n",
        )
        .await
        .expect("sent");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered without the body")
            .expect("read");
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 413"), "{text}");
        assert!(text.contains("payload_too_large"), "{text}");
    }
}

#[tokio::test]
async fn small_ones_each_get_a_clear_error() {
    let server = TestServer::default_server();
    // max_tokens at i64::MAX does not overflow the context check.
    let body = json!({"model": MODEL, "prompt": "x", "max_tokens": i64::MAX});
    let e = server
        .post("/v1/completions", &body)
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["code"], "context_length_exceeded", "{e}");
    // A body that is not declared JSON: 415 with its own code.
    let reply = server
        .call(
            axum::http::Request::post("/v1/completions")
                .header("content-type", "text/plain")
                .body(axum::body::Body::from("{}"))
                .expect("request"),
        )
        .await;
    let e = reply.error(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(e["code"], "unsupported_media_type", "{e}");
}
