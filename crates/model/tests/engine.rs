//! The real model executor inside the engine: greedy generation does not depend on batching or
//! preemption, and the demo model runs end to end.

use std::path::Path;

use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishStatus, FinishedOutput, RequestOutput,
    RequestStream, SamplingParams, SchedulerConfig, StopConditions,
};
use wayfinder_model::arch::Architecture;
use wayfinder_model::synth::{SynthSpec, write_model};
use wayfinder_model::{Dtype, LoadOptions, ModelExecutor};

fn engine(dir: &Path, num_blocks: usize, budget: usize) -> EngineHandle {
    let model = wayfinder_model::load(
        dir,
        &LoadOptions {
            dtype: Some(Dtype::F32),
            max_model_len: Some(128),
        },
    )
    .expect("load");
    let block_size = 4;
    let executor = ModelExecutor::new(model.decoder, num_blocks, block_size);
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: 16,
            max_num_batched_tokens: budget,
            max_model_len: 64,
            block_size,
            num_blocks,
            ..SchedulerConfig::default()
        },
        eos_token_ids: model.text.eos_token_ids,
        seed: Some(1),
    };
    EngineHandle::spawn(config, Box::new(executor), None).expect("spawn")
}

fn greedy(id: &str, prompt: Vec<u32>, n: u32) -> EngineRequest {
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams::greedy())
        .stop(StopConditions {
            max_tokens: n,
            stop_token_ids: Vec::new(),
            ignore_eos: true,
        })
        .build()
        .expect("valid")
}

fn collect(mut s: RequestStream) -> (Vec<u32>, FinishedOutput) {
    let mut tokens = Vec::new();
    loop {
        match s.blocking_next().expect("finishes") {
            RequestOutput::Token(t) => tokens.push(t.token_id),
            RequestOutput::PromptLogprobs(_) => panic!("not asked for"),
            RequestOutput::Finished(f) => return (tokens, f),
        }
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 53 + i * 17 + 3) % 290)
        .collect()
}

#[test]
fn greedy_output_is_the_same_alone_batched_and_after_preemption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = SynthSpec::tiny(Architecture::Llama);
    spec.num_layers = 1;
    write_model(dir.path(), &spec, 3, Dtype::F32, None).expect("write");
    let target = prompt(0, 13);

    let alone = engine(dir.path(), 256, 64);
    let (solo, _) = collect(
        alone
            .add_request(greedy("t", target.clone(), 24))
            .expect("add"),
    );
    alone.shutdown();

    let run_with_others = |num_blocks: usize, budget: usize| {
        let e = engine(dir.path(), num_blocks, budget);
        let others: Vec<_> = (1..6)
            .map(|i| {
                e.add_request(greedy(&format!("o{i}"), prompt(i, 5 + 4 * i as usize), 24))
                    .expect("add")
            })
            .collect();
        let mine = e.add_request(greedy("t", target.clone(), 24)).expect("add");
        let (tokens, fin) = collect(mine);
        let other_preemptions: u32 = others
            .into_iter()
            .map(|s| collect(s).1.num_preemptions)
            .sum();
        e.shutdown();
        (tokens, fin.num_preemptions + other_preemptions)
    };
    let (batched, _) = run_with_others(256, 64);
    assert_eq!(batched, solo, "batched with five others");
    // 20 blocks of 4 slots cannot hold six growing requests: some must be preempted.
    let (preempted, preemptions) = run_with_others(20, 16);
    assert!(preemptions > 0, "the small pool forces preemption");
    assert_eq!(preempted, solo, "with preemption and chunked prefill");
}

#[test]
fn the_demo_model_is_written_once_and_generates() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = wayfinder_model::synth::demo::ensure_demo(root.path()).expect("demo");
    let modified = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("written");
    assert_eq!(
        wayfinder_model::synth::demo::ensure_demo(root.path()).expect("cached"),
        dir
    );
    let again = std::fs::metadata(dir.join("model.safetensors"))
        .and_then(|m| m.modified())
        .expect("still there");
    assert_eq!(modified, again, "the second call reuses the folder");

    let model = wayfinder_model::load(&dir, &LoadOptions::default()).expect("load demo");
    assert_eq!(model.config.hidden_size, 256);
    assert_eq!(model.config.num_layers, 4);
    assert!(!model.text.chat_template.is_fallback());
    let text = model
        .text
        .chat_template
        .render(
            &[wayfinder_text::chat_template::ChatMessage::new(
                "user", "Hello!",
            )],
            true,
        )
        .expect("render");
    let ids = model.text.tokenizer.encode(&text, false).expect("encode");
    let eos = model.text.eos_token_ids.clone();
    let executor = ModelExecutor::new(model.decoder, 64, 16);
    let e = EngineHandle::spawn(
        EngineConfig {
            scheduler: SchedulerConfig {
                num_blocks: 64,
                max_model_len: 1024,
                ..SchedulerConfig::default()
            },
            eos_token_ids: eos,
            seed: Some(3),
        },
        Box::new(executor),
        None,
    )
    .expect("spawn");
    let (tokens, fin) = collect(e.add_request(greedy("demo", ids, 8)).expect("add"));
    assert_eq!(fin.status, FinishStatus::Length);
    assert_eq!(tokens.len(), 8);
    e.shutdown();
}

#[test]
fn a_max_model_len_beyond_the_models_context_is_refused_before_loading_weights() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_model(
        dir.path(),
        &SynthSpec::tiny(Architecture::Llama),
        1,
        Dtype::F32,
        None,
    )
    .expect("write");
    let err = wayfinder_model::load(
        dir.path(),
        &LoadOptions {
            dtype: None,
            max_model_len: Some(1 << 30),
        },
    )
    .expect_err("beyond max_position_embeddings");
    let text = err.to_string();
    assert!(
        text.contains("max_position_embeddings") && text.contains("config.json"),
        "{text}"
    );
}

/// Prompt logprobs on the demo model: the same under any prefill chunking, and equal to the
/// logprobs of the same tokens when they were sampled (the decoder returns the right rows).
#[test]
fn prompt_logprobs_on_the_demo_model_match_the_sampled_ones() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = wayfinder_model::synth::demo::ensure_demo(root.path()).expect("demo");
    let run = |budget: usize, request: EngineRequest| {
        let model = wayfinder_model::load(&dir, &LoadOptions::default()).expect("load demo");
        let executor = ModelExecutor::new(model.decoder, 64, 16);
        let e = EngineHandle::spawn(
            EngineConfig {
                scheduler: SchedulerConfig {
                    num_blocks: 64,
                    max_num_batched_tokens: budget,
                    max_model_len: 1024,
                    ..SchedulerConfig::default()
                },
                eos_token_ids: Vec::new(),
                seed: Some(3),
            },
            Box::new(executor),
            None,
        )
        .expect("spawn");
        let mut stream = e.add_request(request).expect("add");
        let (mut prompt_lps, mut sampled) = (Vec::new(), Vec::new());
        loop {
            match stream.blocking_next().expect("finishes") {
                RequestOutput::PromptLogprobs(l) => prompt_lps.extend(l),
                RequestOutput::Token(t) => sampled.push((t.token_id, t.logprobs.expect("asked"))),
                RequestOutput::Finished(_) => break,
            }
        }
        e.shutdown();
        (prompt_lps, sampled)
    };
    let prompt = prompt(4, 30);
    let sampling = SamplingParams {
        logprobs: Some(3),
        ..SamplingParams::greedy()
    };
    let generate = EngineRequest::builder("g", prompt.clone())
        .sampling(sampling)
        .max_tokens(6)
        .build()
        .expect("valid");
    let (_, sampled) = run(512, generate);
    let mut whole = prompt.clone();
    whole.extend(sampled.iter().map(|s| s.0));
    let score = |budget| {
        let req = EngineRequest::builder("s", whole.clone())
            .sampling(SamplingParams {
                prompt_logprobs: Some(3),
                ..SamplingParams::greedy()
            })
            .max_tokens(0)
            .build()
            .expect("valid");
        run(budget, req).0
    };
    let (one_chunk, chunked) = (score(512), score(7));
    assert_eq!(one_chunk.len(), whole.len() - 1);
    // The demo's f32 products are not bit for bit the same in chunks of 7 as in one chunk (gemm
    // blocks by row count), and the f16 KV cache can round those last bits to neighbouring
    // halves: close relative to the logits' size (the demo's reach ±130), not equal.
    for (a, b) in one_chunk.iter().zip(&chunked) {
        assert!(
            (a.logprob - b.logprob).abs() < 1e-4 * (1.0 + a.logprob.abs()),
            "{a:?} vs {b:?}"
        );
    }
    for (k, (token, lp)) in sampled.iter().enumerate() {
        let scored = &one_chunk[prompt.len() - 1 + k];
        assert!(
            (scored.logprob - lp.logprob).abs() < 2e-2,
            "token {k} ({token}): scored {scored:?}, sampled {lp:?}"
        );
        assert_eq!(scored.top[0].0, *token, "greedy tokens are the most likely");
    }
}
