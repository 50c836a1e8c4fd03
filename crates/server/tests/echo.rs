//! `POST /v1/completions` with `echo`, `logprobs` and `max_tokens: 0`: the prompt's logprobs as
//! the legacy OpenAI API gave them (and lm-evaluation-harness scores with), in process and
//! across the engine protocol.

mod common;
mod journey_support;

use axum::http::StatusCode;
use serde_json::{Value, json};
use wayfinder_core::testing::{TestExecutor, TestExecutorConfig};

use common::{MODEL, Options, TestServer, tokenizer};
use journey_support::{Mode, server};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

async fn complete(server: &TestServer, body: Value) -> Value {
    let reply = server.post("/v1/completions", &body).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    reply.json()
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(Value::as_f64)
        .collect()
}

async fn scores_the_prompt(mode: Mode) {
    let server = server(mode, Options::default()).await;
    let prompt = "the quiet sea rolls over the stones";
    let ids = tokenizer().encode(prompt, true).expect("encodes");
    // A greedy continuation, with its logprobs as sampled.
    let generated = complete(
        &server,
        json!({"model": MODEL, "prompt": ids, "max_tokens": 4, "temperature": 0, "logprobs": 1}),
    )
    .await;
    let sampled = floats(&generated["choices"][0]["logprobs"]["token_logprobs"]);
    // The tokens it sampled, from the test model itself.
    let more = TestExecutor::new(TestExecutorConfig {
        vocab_size: tokenizer().vocab_size(),
        num_slots: 1,
        avoid_tokens: common::eos_ids(),
        ..TestExecutorConfig::default()
    })
    .expected_greedy(&ids, 4);

    // The prompt and that continuation, scored: the same logprobs, row for row.
    let mut whole = ids.clone();
    whole.extend(&more);
    let scored = complete(
        &server,
        json!({"model": MODEL, "prompt": whole, "max_tokens": 0, "echo": true, "logprobs": 2}),
    )
    .await;
    let choice = &scored["choices"][0];
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(scored["usage"]["completion_tokens"], 0);
    assert_eq!(scored["usage"]["prompt_tokens"], whole.len());
    let lp = &choice["logprobs"];
    let got = floats(&lp["token_logprobs"]);
    assert_eq!(got.len(), whole.len(), "one per prompt token");
    assert_eq!(got[0], None, "nothing predicts the first token");
    assert!(got[1..].iter().all(|l| l.is_some_and(|l| l <= 0.0)));
    assert!(lp["top_logprobs"][0].is_null());
    for top in &lp["top_logprobs"].as_array().expect("array")[1..] {
        let n = top.as_object().map_or(0, serde_json::Map::len);
        assert!((1..=2).contains(&n), "{top}");
    }
    assert_eq!(sampled.len(), more.len());
    for (k, (g, s)) in got[ids.len()..].iter().zip(&sampled).enumerate() {
        let (g, s) = (g.expect("scored"), s.expect("sampled"));
        assert!((g - s).abs() < 1e-4, "token {k}: scored {g}, sampled {s}");
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .expect("offsets")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(offsets.len(), whole.len());
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
    assert_eq!(offsets[0], 0);
    assert_eq!(
        choice["text"],
        tokenizer().decode(&whole, false).expect("decodes")
    );
    server.wait_idle().await;
}

#[tokio::test]
async fn echo_scores_the_prompt_in_process() {
    scores_the_prompt(Mode::InProcess).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_scores_the_prompt_across_the_engine_protocol() {
    scores_the_prompt(Mode::EngineProcess).await;
}

#[tokio::test]
async fn echo_with_generation_text_streaming_and_without_logprobs() {
    let server = TestServer::default_server();
    let prompt = "waves and wind";
    let n_prompt = tokenizer().encode(prompt, true).expect("encodes").len();
    // Prompt then 3 generated tokens; text starts with the prompt as sent.
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 3, "echo": true,
                      "logprobs": 0, "temperature": 0});
    let both = complete(&server, body.clone()).await;
    let choice = &both["choices"][0];
    let text = choice["text"].as_str().expect("text");
    assert!(text.starts_with(prompt), "{text:?}");
    let lp = &choice["logprobs"];
    assert_eq!(floats(&lp["token_logprobs"]).len(), n_prompt + 3);
    let offsets = lp["text_offset"].as_array().expect("offsets");
    assert!(
        offsets[n_prompt]
            .as_u64()
            .is_some_and(|o| o as usize >= prompt.len())
    );
    assert_eq!(both["usage"]["completion_tokens"], 3);

    // Streamed: the same text, the prompt in the first chunk.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let reply = server.post("/v1/completions", &stream_body).await;
    let chunks: Vec<Value> = reply
        .sse_data()
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("json"))
        .collect();
    assert!(
        chunks[0]["choices"][0]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with(prompt))
    );
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);

    // Without logprobs: the text only; with `max_tokens: 0`, the prompt alone.
    let plain = complete(
        &server,
        json!({"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": true}),
    )
    .await;
    assert_eq!(plain["choices"][0]["text"], prompt);
    assert!(plain["choices"][0]["logprobs"].is_null());
    assert_eq!(plain["choices"][0]["finish_reason"], "length");
    server.wait_idle().await;
}

#[tokio::test]
async fn max_tokens_zero_without_echo_is_refused_and_a_full_context_prompt_is_scored() {
    let server = TestServer::default_server();
    let reply = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 0}),
        )
        .await;
    assert_eq!(reply.error(StatusCode::BAD_REQUEST)["param"], "max_tokens");
    // The test server's context is 256 tokens: a 256-token prompt can be scored, not continued.
    let ids: Vec<u32> = (0..256).map(|i| 40 + (i % 50)).collect();
    let scored = complete(
        &server,
        json!({"model": MODEL, "prompt": ids, "max_tokens": 0, "echo": true, "logprobs": 0}),
    )
    .await;
    assert_eq!(
        floats(&scored["choices"][0]["logprobs"]["token_logprobs"]).len(),
        256
    );
    let reply = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": ids, "max_tokens": 1, "echo": true}),
        )
        .await;
    reply.error(StatusCode::BAD_REQUEST);
}
