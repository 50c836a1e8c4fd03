//! Property tests of the validation layer: arbitrary JSON bodies (and arbitrary values in the
//! fields the API knows) never panic a handler or get a 5xx; whatever is refused is refused
//! with an OpenAI error body; the engine is left with nothing running and every KV block free.

mod common;

use axum::http::StatusCode;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use common::{MODEL, TestServer};

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (-3i64..300).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z <|>\\\\\u{00e9}\u{1F600}]{0,12}".prop_map(Value::from),
        Just(Value::from(MODEL)),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stop",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "logprobs",
    "top_logprobs",
    "echo",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "suffix",
    "best_of",
    "tools",
    "response_format",
];

/// A body with the API's own field names holding arbitrary values, usually with the right
/// model and a plausible prompt, so that validation is exercised past its first checks.
fn body() -> impl Strategy<Value = Value> {
    let fields = proptest::collection::btree_map(proptest::sample::select(FIELDS), value(), 0..8);
    (fields, any::<bool>(), any::<bool>()).prop_map(|(fields, right_model, prompt)| {
        let mut map: Map<String, Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        if right_model {
            map.insert("model".into(), json!(MODEL));
        }
        if prompt {
            map.entry("prompt").or_insert(json!("the sea"));
            map.entry("messages")
                .or_insert(json!([{"role": "user", "content": "hi"}]));
        }
        if let Some(m) = map.get_mut("max_tokens")
            && m.as_i64().is_some_and(|n| n > 64)
        {
            *m = json!(8);
        }
        map.remove("stream");
        Value::Object(map)
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn arbitrary_bodies_get_an_answer_never_a_panic_or_5xx(
        body in prop_oneof![body(), value()],
        chat in any::<bool>(),
    ) {
        let server = TestServer::default_server();
        let path = if chat { "/v1/chat/completions" } else { "/v1/completions" };
        runtime().block_on(async {
            let reply = server.post(path, &body).await;
            prop_assert!(!reply.status.is_server_error(), "{} {}: {}", reply.status, body, reply.text);
            if reply.status != StatusCode::OK {
                let v: Value = serde_json::from_str(&reply.text).expect("an error body is JSON");
                prop_assert!(v["error"]["message"].is_string(), "{}", reply.text);
                prop_assert!(v["error"]["type"].is_string(), "{}", reply.text);
            }
            let stats = server.wait_idle().await;
            prop_assert_eq!(stats.num_free_blocks, stats.num_total_blocks);
            Ok(())
        })?;
    }
}
