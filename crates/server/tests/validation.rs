//! Every bad input gets a 4xx with the OpenAI error body, and none reaches the engine.

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{MODEL, Options, TestServer};
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";
const CMPL: &str = "/v1/completions";

fn chat_with(extra: &Value) -> Value {
    let mut body = json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

fn server() -> TestServer {
    TestServer::new(&Options {
        max_model_len: 64,
        max_body_bytes: 4096,
        ..Options::default()
    })
}

/// Posts `body` and checks the error; returns `error`.
async fn refused(server: &TestServer, path: &str, body: &Value, status: StatusCode) -> Value {
    server.post(path, body).await.error(status)
}

async fn engine_untouched(server: &TestServer) {
    let stats = server.engine.stats().await.expect("engine up");
    assert_eq!(stats.num_steps, 0, "a refused request reached the engine");
}

#[tokio::test]
async fn malformed_json_and_wrong_types() {
    let s = server();
    let raw = |text: &'static str| {
        Request::post(CHAT)
            .header("content-type", "application/json")
            .body(Body::from(text))
            .expect("request")
    };
    let e = s
        .call(raw("{\"model\": "))
        .await
        .error(StatusCode::BAD_REQUEST);
    assert_eq!(e["type"], "invalid_request_error");
    s.call(raw("[1, 2]")).await.error(StatusCode::BAD_REQUEST);
    refused(
        &s,
        CHAT,
        &chat_with(&json!({"temperature": "hot"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &s,
        CHAT,
        &chat_with(&json!({"messages": "hi"})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &s,
        CHAT,
        &chat_with(&json!({"n": 1.5})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(
        &s,
        CMPL,
        &json!({"model": MODEL, "prompt": {"a": 1}}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    refused(&s, CMPL, &json!({"model": MODEL}), StatusCode::BAD_REQUEST).await;
    refused(&s, CHAT, &json!({"messages": []}), StatusCode::BAD_REQUEST).await;
    engine_untouched(&s).await;
}

#[tokio::test]
async fn out_of_range_sampling() {
    let s = server();
    for (field, value) in [
        ("temperature", json!(2.5)),
        ("temperature", json!(-0.1)),
        ("top_p", json!(0)),
        ("top_p", json!(1.5)),
        ("min_p", json!(2)),
        ("presence_penalty", json!(3)),
        ("frequency_penalty", json!(-3)),
        ("repetition_penalty", json!(0)),
        ("top_k", json!(-5)),
    ] {
        let e = refused(
            &s,
            CHAT,
            &chat_with(&json!({ field: value })),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(e["param"], field, "{e}");
        let message = e["message"].as_str().unwrap_or_default();
        assert!(message.contains(field), "the message names the field: {e}");
    }
    for n in [0, 17, -1] {
        let e = refused(
            &s,
            CHAT,
            &chat_with(&json!({"n": n})),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(e["param"], "n");
        assert!(
            e["message"].as_str().is_some_and(|m| m.contains("[1, 16]")),
            "{e}"
        );
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        let e = refused(
            &s,
            CHAT,
            &chat_with(&json!({ field: 0 })),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(e["param"], "max_tokens");
    }
    let e = refused(
        &s,
        CHAT,
        &chat_with(&json!({"top_logprobs": 2})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "top_logprobs");
    let e = refused(
        &s,
        CHAT,
        &chat_with(&json!({"logprobs": true, "top_logprobs": 21})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "top_logprobs");
    let e = refused(
        &s,
        CMPL,
        &json!({"model": MODEL, "prompt": "x", "logprobs": 50}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "logprobs");
    engine_untouched(&s).await;
}

#[tokio::test]
async fn context_length() {
    let s = server();
    // The prompt alone fills the 64-token context.
    let long = "river ".repeat(80);
    let e = refused(
        &s,
        CMPL,
        &json!({"model": MODEL, "prompt": long}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    // The prompt fits, but not with the tokens asked for.
    let e = refused(
        &s,
        CMPL,
        &json!({"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 61}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    let e = refused(
        &s,
        CHAT,
        &chat_with(&json!({"max_tokens": 1000})),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["code"], "context_length_exceeded");
    engine_untouched(&s).await;
    // Exactly at the limit is fine: without max_tokens, the rest of the context is the default.
    let ok = s
        .post(
            CMPL,
            &json!({"model": MODEL, "prompt": [1, 2, 3, 4], "max_tokens": 60}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    let ok = s
        .post(CMPL, &json!({"model": MODEL, "prompt": [1, 2, 3, 4]}))
        .await;
    assert_eq!(ok.json()["usage"]["completion_tokens"], 60);
}

#[tokio::test]
async fn unknown_model_and_empty_inputs() {
    let s = server();
    let e = refused(
        &s,
        CHAT,
        &chat_with(&json!({"model": "gpt-17"})),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(e["param"], "model");
    refused(
        &s,
        CMPL,
        &json!({"model": "gpt-17", "prompt": "x"}),
        StatusCode::NOT_FOUND,
    )
    .await;
    let e = refused(
        &s,
        CHAT,
        &json!({"model": MODEL, "messages": []}),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(e["param"], "messages");
    for prompt in [json!([]), json!([[]]), json!(""), json!([999_999])] {
        let e = refused(
            &s,
            CMPL,
            &json!({"model": MODEL, "prompt": prompt}),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(e["param"], "prompt", "{prompt}");
    }
    engine_untouched(&s).await;
}

#[tokio::test]
async fn unsupported_features_are_refused_clearly() {
    let s = server();
    for (extra, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
            "messages[0].content",
        ),
    ] {
        let e = refused(&s, CHAT, &chat_with(&extra), StatusCode::BAD_REQUEST).await;
        assert_eq!(e["param"], param, "{e}");
        assert_eq!(e["code"], "unsupported");
    }
    for extra in [
        json!({"max_tokens": 0}),
        json!({"echo": true, "max_tokens": -1}),
        json!({"suffix": "x"}),
        json!({"best_of": 3}),
    ] {
        let mut body = json!({"model": MODEL, "prompt": "x"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        refused(&s, CMPL, &body, StatusCode::BAD_REQUEST).await;
    }
    engine_untouched(&s).await;
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let s = server();
    let big = "word ".repeat(2000);
    let e = refused(
        &s,
        CHAT,
        &chat_with(&json!({"messages": [{"role": "user", "content": big}]})),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert_eq!(e["code"], "payload_too_large");
    engine_untouched(&s).await;
}
