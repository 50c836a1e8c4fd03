//! Every endpoint, in process (`tower::ServiceExt::oneshot` on the router).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{MODEL, Options, TestServer, expected_text, tokenizer};
use serde_json::{Value, json};

fn chat(content: &str, extra: &Value) -> Value {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
    });
    merge(&mut body, extra);
    body
}

fn completion(prompt: &Value, extra: &Value) -> Value {
    let mut body = json!({ "model": MODEL, "prompt": prompt });
    merge(&mut body, extra);
    body
}

fn merge(body: &mut Value, extra: &Value) {
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
}

#[tokio::test]
async fn health_version_and_models() {
    let server = TestServer::default_server();
    let health = server.get("/health").await;
    assert_eq!(health.status, StatusCode::OK);

    let version = server.get("/version").await;
    assert_eq!(version.status, StatusCode::OK);
    assert_eq!(version.json()["version"], env!("CARGO_PKG_VERSION"));

    let models = server.get("/v1/models").await;
    assert_eq!(models.status, StatusCode::OK);
    let body = models.json();
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], MODEL);
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["max_model_len"], 256);

    let missing = server.get("/v1/nothing").await;
    missing.error(StatusCode::NOT_FOUND);
    let wrong_method = server.get("/v1/chat/completions").await;
    wrong_method.error(StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn health_is_503_once_the_engine_stops() {
    let server = TestServer::default_server();
    let engine = server.engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .expect("shutdown");
    server
        .get("/health")
        .await
        .error(StatusCode::SERVICE_UNAVAILABLE);
    let reply = server
        .post("/v1/chat/completions", &chat("hi", &json!({})))
        .await;
    reply.error(StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn chat_completion() {
    let server = TestServer::default_server();
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat("Hello there", &json!({"max_tokens": 6, "temperature": 0})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert_eq!(reply.headers["x-request-id"], id);
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 6);

    // The prompt is the ChatML rendering, tokenized without special tokens added.
    let text = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n";
    let prompt = tokenizer().encode(text, false).expect("encodes");
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(body["usage"]["total_tokens"], prompt.len() + 6);
    assert_eq!(choice["message"]["content"], expected_text(&prompt, 6));
    server.wait_idle().await;
}

#[tokio::test]
async fn chat_accepts_text_parts_and_max_completion_tokens_and_ignores_unknown_fields() {
    let server = TestServer::default_server();
    let body = json!({
        "model": MODEL,
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]},
        ],
        "max_completion_tokens": 3,
        "some_future_field": {"x": 1},
        "user": "someone",
        "tools": [],
        "tool_choice": "none",
        "response_format": {"type": "text"},
    });
    let reply = server.post("/v1/chat/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn completions_with_every_prompt_form() {
    let server = TestServer::default_server();
    let ids = tokenizer().encode("The river", true).expect("encodes");
    let greedy = json!({"max_tokens": 5, "temperature": 0});

    let reply = server
        .post("/v1/completions", &completion(&json!("The river"), &greedy))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    let id = body["id"].as_str().expect("id");
    assert!(id.starts_with("cmpl-"), "{id}");
    assert_eq!(reply.headers["x-request-id"], id);
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["choices"][0]["text"], expected_text(&ids, 5));
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["prompt_tokens"], ids.len());

    let reply = server
        .post("/v1/completions", &completion(&json!(ids), &greedy))
        .await;
    assert_eq!(reply.json()["choices"][0]["text"], expected_text(&ids, 5));

    let reply = server
        .post(
            "/v1/completions",
            &completion(&json!(["The river", "A garden"]), &greedy),
        )
        .await;
    let body = reply.json();
    let other = tokenizer().encode("A garden", true).expect("encodes");
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(body["choices"][1]["index"], 1);
    assert_eq!(body["choices"][0]["text"], expected_text(&ids, 5));
    assert_eq!(body["choices"][1]["text"], expected_text(&other, 5));
    assert_eq!(body["usage"]["prompt_tokens"], ids.len() + other.len());
    assert_eq!(body["usage"]["completion_tokens"], 10);

    let reply = server
        .post(
            "/v1/completions",
            &completion(&json!([ids, other]), &greedy),
        )
        .await;
    let body = reply.json();
    assert_eq!(body["choices"][1]["text"], expected_text(&other, 5));
    server.wait_idle().await;
}

#[tokio::test]
async fn n_choices_are_merged_with_indices_and_summed_usage() {
    let server = TestServer::default_server();
    let request = completion(
        &json!("Once upon"),
        &json!({"max_tokens": 4, "n": 3, "seed": 11, "temperature": 1.0}),
    );
    let first = server.post("/v1/completions", &request).await.json();
    let choices = first["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["finish_reason"], "length");
    }
    assert_eq!(first["usage"]["completion_tokens"], 12);
    // Seeded: the same request gives the same choices.
    let second = server.post("/v1/completions", &request).await.json();
    assert_eq!(first["choices"], second["choices"]);

    let chat = server
        .post(
            "/v1/chat/completions",
            &chat("Hi", &json!({"max_tokens": 2, "n": 2})),
        )
        .await
        .json();
    assert_eq!(chat["choices"].as_array().map(Vec::len), Some(2));
    assert_eq!(chat["choices"][1]["index"], 1);
    assert_eq!(chat["usage"]["completion_tokens"], 4);
    server.wait_idle().await;
}

#[tokio::test]
async fn stop_strings_end_the_text_and_free_the_request() {
    let server = TestServer::default_server();
    let ids = tokenizer().encode("The mountain", true).expect("encodes");
    let full = expected_text(&ids, 24);
    // A stop string from the middle of the greedy output: the text ends right before it.
    let chars: Vec<(usize, char)> = full.char_indices().collect();
    let (start, _) = chars[chars.len() / 2];
    let end = chars
        .get(chars.len() / 2 + 2)
        .map_or(full.len(), |&(i, _)| i);
    let stop = &full[start..end];
    let cut = full.find(stop).expect("present");
    let reply = server
        .post(
            "/v1/completions",
            &completion(
                &json!(ids),
                &json!({"max_tokens": 24, "temperature": 0, "stop": ["zzzz-never", stop]}),
            ),
        )
        .await;
    let body = reply.json();
    assert_eq!(body["choices"][0]["text"], &full[..cut], "stop {stop:?}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // The engine request was aborted at the stop string: nothing is left running.
    server.wait_idle().await;

    // A single string works too, on chat.
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat("x", &json!({"max_tokens": 4, "stop": "zzzz-never"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn logprobs_in_openai_shapes() {
    let server = TestServer::default_server();
    let chat = server
        .post(
            "/v1/chat/completions",
            &chat(
                "Hi",
                &json!({"max_tokens": 4, "logprobs": true, "top_logprobs": 2}),
            ),
        )
        .await
        .json();
    let content = chat["choices"][0]["logprobs"]["content"]
        .as_array()
        .expect("logprobs.content");
    assert_eq!(content.len(), 4);
    for entry in content {
        assert!(entry["token"].is_string());
        assert!(entry["logprob"].as_f64().is_some_and(|p| p <= 0.0));
        assert!(entry["bytes"].is_array());
        assert_eq!(entry["top_logprobs"].as_array().map(Vec::len), Some(2));
    }
    // Without `logprobs`, none.
    let plain = server
        .post("/v1/chat/completions", &chat_body_plain())
        .await
        .json();
    assert!(plain["choices"][0]["logprobs"].is_null());

    let cmpl = server
        .post(
            "/v1/completions",
            &completion(&json!("Hi"), &json!({"max_tokens": 3, "logprobs": 2})),
        )
        .await
        .json();
    let lp = &cmpl["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(3));
    assert_eq!(lp["token_logprobs"].as_array().map(Vec::len), Some(3));
    assert_eq!(lp["text_offset"].as_array().map(Vec::len), Some(3));
    assert_eq!(
        lp["top_logprobs"][0].as_object().map(|m| m.len() <= 2),
        Some(true)
    );
    assert_eq!(lp["text_offset"][0], 0);
}

fn chat_body_plain() -> Value {
    chat("Hi", &json!({"max_tokens": 2}))
}

#[tokio::test]
async fn chat_streaming_in_process() {
    let server = TestServer::default_server();
    let request = chat(
        "Stream please",
        &json!({"max_tokens": 7, "temperature": 0, "stream": true,
                 "stream_options": {"include_usage": true}}),
    );
    let reply = server.post("/v1/chat/completions", &request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert!(
        reply.headers["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON chunk"))
        .collect();
    let id = chunks[0]["id"].as_str().expect("id");
    assert_eq!(reply.headers["x-request-id"], id);
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"].as_array().map(Vec::len), Some(0));
    assert_eq!(usage["usage"]["completion_tokens"], 7);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let whole = server
        .post(
            "/v1/chat/completions",
            &chat("Stream please", &json!({"max_tokens": 7, "temperature": 0})),
        )
        .await
        .json();
    assert_eq!(whole["choices"][0]["message"]["content"], text);
}

#[tokio::test]
async fn completion_streaming_without_usage() {
    let server = TestServer::default_server();
    let reply = server
        .post(
            "/v1/completions",
            &completion(
                &json!("Go"),
                &json!({"max_tokens": 3, "stream": true, "n": 2}),
            ),
        )
        .await;
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("JSON chunk"))
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "text_completion" && c.get("usage").is_none())
    );
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finishes.len(), 2, "one finish chunk per choice");
}

#[tokio::test]
async fn api_key_guards_v1_only() {
    let server = TestServer::new(&Options {
        api_key: Some("sekret".into()),
        ..Options::default()
    });
    let error = server
        .get("/v1/models")
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(error["code"], "invalid_api_key");
    let wrong = Request::get("/v1/models")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .expect("request");
    server.call(wrong).await.error(StatusCode::UNAUTHORIZED);
    let right = Request::get("/v1/models")
        .header("authorization", "Bearer sekret")
        .body(Body::empty())
        .expect("request");
    assert_eq!(server.call(right).await.status, StatusCode::OK);
    server
        .post("/v1/chat/completions", &chat("hi", &json!({})))
        .await
        .error(StatusCode::UNAUTHORIZED);
    assert_eq!(server.get("/health").await.status, StatusCode::OK);
    assert_eq!(server.get("/version").await.status, StatusCode::OK);
}

#[tokio::test]
async fn engine_failures_are_500_or_an_sse_error_event() {
    let server = TestServer::new(&Options {
        fail_on_steps: (1..=4).collect(),
        ..Options::default()
    });
    let error = server
        .post(
            "/v1/chat/completions",
            &chat("hi", &json!({"max_tokens": 3})),
        )
        .await
        .error(StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(error["type"], "internal_error");

    // After the headers went out: an error event, then [DONE].
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat("hi", &json!({"max_tokens": 3, "stream": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&data[data.len() - 2]).expect("JSON");
    assert_eq!(error["error"]["type"], "internal_error", "{error}");
    server.wait_idle().await;
}

#[tokio::test]
async fn a_request_past_the_request_timeout_is_504_or_an_sse_error_and_frees_its_blocks() {
    let server = TestServer::new(&Options {
        step_delay: std::time::Duration::from_millis(20),
        request_timeout: Some(std::time::Duration::from_millis(150)),
        ..Options::default()
    });
    // 40 steps of 20 ms cannot finish in 150 ms.
    let error = server
        .post(
            "/v1/chat/completions",
            &chat("hi", &json!({"max_tokens": 40, "ignore_eos": true})),
        )
        .await
        .error(StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error["type"], "timeout_error");
    assert_eq!(error["code"], "request_timeout");
    server.wait_idle().await;

    let reply = server
        .post(
            "/v1/chat/completions",
            &chat(
                "hi",
                &json!({"max_tokens": 40, "ignore_eos": true, "stream": true}),
            ),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let data = reply.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let error: Value = serde_json::from_str(&data[data.len() - 2]).expect("JSON");
    assert_eq!(error["error"]["type"], "timeout_error", "{error}");
    assert!(
        data.len() > 3,
        "tokens streamed before the timeout: {data:?}"
    );
    server.wait_idle().await;

    // A request that fits in the limit is untouched.
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat("hi", &json!({"max_tokens": 2})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
}

#[tokio::test]
async fn the_models_sampling_defaults_apply_where_a_request_sets_none() {
    // A model whose generation_config.json asks for greedy decoding.
    let server = TestServer::new(&Options {
        sampling_defaults: wayfinder_core::SamplingParams::greedy(),
        ..Options::default()
    });
    let ids = tokenizer().encode("The river", true).expect("encodes");
    let reply = server
        .post(
            "/v1/completions",
            &completion(&json!("The river"), &json!({"max_tokens": 6})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    assert_eq!(reply.json()["choices"][0]["text"], expected_text(&ids, 6));
    // A request's own value still wins: at temperature 2 with a seed the text differs.
    let hot = json!({"max_tokens": 6, "temperature": 2.0, "seed": 5});
    let reply = server
        .post("/v1/completions", &completion(&json!("The river"), &hot))
        .await;
    assert_ne!(reply.json()["choices"][0]["text"], expected_text(&ids, 6));
}
