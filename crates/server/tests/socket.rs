//! Over a real socket (port 0, [`wayfinder_server::run`]): SSE framing, the usage chunk,
//! `[DONE]`, disconnects that free every block, 429 under a full queue, 401, graceful shutdown.

mod common;

use std::time::Duration;

use common::{MODEL, Options, Running, TestServer, sse_data};
use serde_json::{Value, json};

fn chat(extra: &Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Tell me"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Waits (bounded) until the engine has a request running.
async fn wait_running(server: &TestServer) {
    for _ in 0..500 {
        let stats = server.engine.stats().await.expect("engine up");
        if stats.num_running > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no request started running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_framing_usage_chunk_and_done() {
    let r = Running::start(&Options::default()).await;
    let response = r
        .post(
            "/v1/chat/completions",
            &chat(&json!({"stream": true, "max_tokens": 5, "n": 2,
                          "stream_options": {"include_usage": true}})),
        )
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().ok(),
        Some("text/event-stream")
    );
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let text = response.text().await.expect("body");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON"))
        .collect();
    assert!(chunks.iter().all(|c| c["id"] == id.as_str()));
    // The role of each choice first.
    for (i, chunk) in chunks[..2].iter().enumerate() {
        assert_eq!(chunk["choices"][0]["index"], i);
        assert_eq!(chunk["choices"][0]["delta"]["role"], "assistant");
    }
    // A finish chunk per choice, with an empty delta.
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter(|c| c["choices"][0]["finish_reason"] == "length")
        .collect();
    assert_eq!(finishes.len(), 2);
    assert!(
        finishes
            .iter()
            .all(|c| c["choices"][0]["delta"] == json!({}))
    );
    // Usage last: no choices, completion tokens over both choices.
    let usage = chunks.last().expect("usage");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 10);
    r.server.wait_idle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_stream_frees_every_block() {
    let r = Running::start(&Options {
        step_delay: Duration::from_millis(5),
        ..Options::default()
    })
    .await;
    let mut response = r
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "A long story", "max_tokens": 200,
                    "stream": true, "n": 2}),
        )
        .send()
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    // Read until some text has arrived, so that the request is decoding.
    let mut seen = String::new();
    while !seen.contains("\"text\"") {
        let chunk = response.chunk().await.expect("read").expect("more");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let busy = r.server.engine.stats().await.expect("stats");
    assert!(busy.num_free_blocks < busy.num_total_blocks, "{busy:?}");
    drop(response);
    let idle = r.server.wait_idle().await;
    assert_eq!(idle.num_free_blocks, idle.num_total_blocks);
    assert!(
        idle.num_steps < 150,
        "aborted, not run to the end: {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_while_waiting_for_a_whole_response_frees_every_block() {
    let r = Running::start(&Options {
        step_delay: Duration::from_millis(5),
        ..Options::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let request = client
        .post(r.url("/v1/completions"))
        .header("content-type", "application/json")
        .body(json!({"model": MODEL, "prompt": "Long", "max_tokens": 200}).to_string());
    let sent = tokio::spawn(request.send());
    wait_running(&r.server).await;
    let result = sent.await.expect("joined");
    assert!(result.is_err(), "the client gave up before the end");
    let idle = r.server.wait_idle().await;
    assert_eq!(idle.num_free_blocks, idle.num_total_blocks);
    assert!(
        idle.num_steps < 150,
        "aborted, not run to the end: {idle:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_gets_429_with_retry_after() {
    let r = Running::start(&Options {
        step_delay: Duration::from_millis(5),
        max_num_seqs: 1,
        max_waiting_requests: 1,
        ..Options::default()
    })
    .await;
    let long = json!({"model": MODEL, "prompt": "Hold", "max_tokens": 200, "stream": true});
    let first = r
        .post("/v1/completions", &long)
        .send()
        .await
        .expect("first");
    let second = r
        .post("/v1/completions", &long)
        .send()
        .await
        .expect("second");
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    let third = r
        .post("/v1/completions", &long)
        .send()
        .await
        .expect("third");
    assert_eq!(third.status(), 429);
    assert_eq!(
        third.headers()["retry-after"].to_str().ok(),
        Some("1"),
        "429 says when to retry"
    );
    let body: Value = third.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_requests");
    drop((first, second));
    r.server.wait_idle().await;
    // Room again once the others are gone.
    let again = r
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 2}),
        )
        .send()
        .await
        .expect("again");
    assert_eq!(again.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_over_the_socket() {
    let r = Running::start(&Options {
        api_key: Some("k3y".into()),
        ..Options::default()
    })
    .await;
    let body = chat(&json!({"max_tokens": 2}));
    let denied = r
        .post("/v1/chat/completions", &body)
        .send()
        .await
        .expect("sent");
    assert_eq!(denied.status(), 401);
    let error: Value = denied.json().await.expect("JSON");
    assert_eq!(error["error"]["type"], "invalid_request_error");
    let allowed = r
        .post("/v1/chat/completions", &body)
        .bearer_auth("k3y")
        .send()
        .await
        .expect("sent");
    assert_eq!(allowed.status(), 200);
    let health = reqwest::get(r.url("/health")).await.expect("health");
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new_connections() {
    let mut r = Running::start(&Options {
        step_delay: Duration::from_millis(5),
        ..Options::default()
    })
    .await;
    let in_flight = tokio::spawn(
        r.post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Finish me", "max_tokens": 40}),
        )
        .send(),
    );
    wait_running(&r.server).await;
    r.shutdown.take().map(|tx| tx.send(()));
    // New connections are refused (polled: the listener closes as the signal is handled).
    let mut refused = false;
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(r.addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(refused, "the listener still accepts after shutdown");
    // The request in flight still completes.
    let response = in_flight.await.expect("joined").expect("response");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 40);
    tokio::time::timeout(Duration::from_secs(10), r.task)
        .await
        .expect("run returns")
        .expect("joined")
        .expect("served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_aborts_what_is_left() {
    let mut r = Running::start(&Options {
        step_delay: Duration::from_millis(5),
        shutdown_timeout: Duration::from_millis(100),
        ..Options::default()
    })
    .await;
    let in_flight = tokio::spawn(
        r.post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "Never done", "max_tokens": 240}),
        )
        .send(),
    );
    wait_running(&r.server).await;
    r.shutdown.take().map(|tx| tx.send(()));
    tokio::time::timeout(Duration::from_secs(10), r.task)
        .await
        .expect("run returns")
        .expect("joined")
        .expect("served");
    let response = in_flight.await.expect("joined").expect("response");
    assert_eq!(response.status(), 503);
    assert!(!r.server.engine.is_running());
}
