//! The README's real-model command, end to end: `wayfinder serve` on the real SmolLM2 Q4_1 GGUF
//! (`scripts/fetch-smollm2.sh`) with `--served-model-name`, in process and with the engine in
//! its own process, answers a completion and a chat request over HTTP with the file's own
//! tokenizer and chat template. The prefix cache is on in process (the default) and off in the
//! engine process (`--no-enable-prefix-caching`, handed to the child): a repeated chat request
//! reads its prompt from the cache, or not, and answers the same.

mod common;

use std::process::Command;

use common::{field, serve_ready_line};
use serde_json::{Value, json};

async fn post(client: &reqwest::Client, url: String, body: Value) -> Value {
    let response = client
        .post(url)
        .json(&body)
        .send()
        .await
        .expect("request sent");
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.expect("JSON answer")
}

async fn serves_the_real_model(engine_process: bool) {
    let gguf = wayfinder_testkit::smollm2_gguf();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    command.arg("serve").arg(&gguf).args([
        "--served-model-name",
        "smollm2",
        "--port",
        "0",
        "--max-model-len",
        "512",
        "--num-kv-blocks",
        "128",
    ]);
    if engine_process {
        command.args(["--engine-process", "--no-enable-prefix-caching"]);
    }
    let (_server, line) = serve_ready_line(&mut command);
    assert!(line.contains("Q4_1"), "the weights stay Q4_1: {line}");
    let base = field(&line, "address=");
    let client = reqwest::Client::new();

    let models = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .expect("models")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(models["data"][0]["id"], "smollm2");

    let completion = post(
        &client,
        format!("{base}/v1/completions"),
        json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 4,
               "temperature": 0}),
    )
    .await;
    let text = completion["choices"][0]["text"].as_str().expect("text");
    assert!(text.contains("Paris"), "{completion}");

    let chat_body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 24,
               "messages": [{"role": "user",
                             "content": "What is the capital of France? Answer in one word."}]});
    let chat = post(
        &client,
        format!("{base}/v1/chat/completions"),
        chat_body.clone(),
    )
    .await;
    let answer = chat["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(answer.contains("Paris"), "{chat}");
    // The template's end token ended it, and was not shown.
    assert_eq!(chat["choices"][0]["finish_reason"], "stop", "{chat}");
    assert!(!answer.contains("<|im_end|>"), "{answer}");

    let again = post(&client, format!("{base}/v1/chat/completions"), chat_body).await;
    assert_eq!(
        again["choices"][0]["message"],
        chat["choices"][0]["message"]
    );
    let prompt = again["usage"]["prompt_tokens"].as_u64().expect("usage");
    let cached = again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64();
    let expect = if engine_process {
        0
    } else {
        (prompt - 1) / 16 * 16
    };
    assert!(prompt > 16, "{again}");
    assert_eq!(cached, Some(expect), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gguf_file_is_served_in_process() {
    serves_the_real_model(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gguf_file_is_served_by_an_engine_process() {
    serves_the_real_model(true).await;
}
