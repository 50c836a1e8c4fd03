//! The prefix cache on real model executors (issue 19): greedy outputs of requests sharing
//! prefixes of various lengths are the same with the cache as without, on the demo model and on
//! the real SmolLM2 (Q4_1 as stored), with the cache's run under a KV pool small enough to
//! preempt and with some requests aborted mid-way — and the cache did serve tokens.

use std::path::Path;

use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishedOutput, RequestOutput, RequestStream,
    SamplingParams, SchedulerConfig, StopConditions,
};
use wayfinder_model::{LoadOptions, Model, ModelExecutor};

const BLOCK: usize = 16;

/// How one run is set up.
struct Run {
    caching: bool,
    num_blocks: usize,
    budget: usize,
}

fn engine(model: Model, run: &Run) -> EngineHandle {
    let executor = ModelExecutor::new(model.decoder, run.num_blocks, BLOCK);
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: 8,
            max_num_batched_tokens: run.budget,
            max_model_len: (run.num_blocks * BLOCK).min(256),
            block_size: BLOCK,
            num_blocks: run.num_blocks,
            enable_prefix_caching: run.caching,
            ..SchedulerConfig::default()
        },
        eos_token_ids: model.text.eos_token_ids,
        seed: Some(1),
    };
    EngineHandle::spawn(config, Box::new(executor), None).expect("spawn")
}

fn greedy(id: String, prompt: Vec<u32>, n: u32) -> EngineRequest {
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

/// Runs `prompts`: the first alone (so that the rest find it cached), then the rest together,
/// dropping the streams of those in `abort` after their first token. Returns each completed
/// request's output and end.
fn run(
    model: Model,
    setup: &Run,
    prompts: &[Vec<u32>],
    n: u32,
    abort: &[usize],
) -> Vec<Option<(Vec<u32>, FinishedOutput)>> {
    let handle = engine(model, setup);
    let first = handle
        .add_request(greedy("p0".into(), prompts[0].clone(), n))
        .expect("add");
    let mut results = vec![Some(collect(first))];
    let streams: Vec<_> = prompts[1..]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            handle
                .add_request(greedy(format!("p{}", i + 1), p.clone(), n))
                .expect("add")
        })
        .collect();
    for (i, mut s) in streams.into_iter().enumerate() {
        if abort.contains(&(i + 1)) {
            let _ = s.blocking_next();
            results.push(None);
        } else {
            results.push(Some(collect(s)));
        }
    }
    handle.shutdown();
    results
}

/// `system` cut at `cuts` (lengths around block boundaries), each followed by a question.
fn sharing_prompts(system: &[u32], questions: &[Vec<u32>], cuts: &[usize]) -> Vec<Vec<u32>> {
    cuts.iter()
        .zip(questions.iter().cycle())
        .map(|(&cut, q)| {
            let mut p = system[..cut.min(system.len())].to_vec();
            p.extend(q);
            p
        })
        .collect()
}

fn check_same(
    prompts: &[Vec<u32>],
    with: &[Option<(Vec<u32>, FinishedOutput)>],
    without: &[Option<(Vec<u32>, FinishedOutput)>],
) {
    for (i, (w, o)) in with.iter().zip(without).enumerate() {
        let (Some((wt, wf)), Some((ot, of))) = (w, o) else {
            continue;
        };
        assert_eq!(wt, ot, "request {i} ({} prompt tokens)", prompts[i].len());
        assert_eq!(of.usage.cached_tokens, 0);
        assert!(wf.usage.cached_tokens < prompts[i].len());
    }
    let served: usize = with
        .iter()
        .flatten()
        .map(|(_, f)| f.usage.cached_tokens)
        .sum();
    assert!(served >= 3 * BLOCK, "the cache served {served} tokens");
}

#[test]
fn the_demo_model_gives_the_same_greedy_outputs_with_and_without_the_cache() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = wayfinder_model::synth::demo::ensure_demo(root.path()).expect("demo");
    let load = |dir: &Path| wayfinder_model::load(dir, &LoadOptions::default()).expect("load");
    let system: Vec<u32> = (0..70).map(|i| (i * 37 + 11) % 250 + 3).collect();
    let questions: Vec<Vec<u32>> = (0..4)
        .map(|q| {
            (0..5 + q)
                .map(|i| (q * 13 + i * 7) as u32 % 200 + 5)
                .collect()
        })
        .collect();
    let cuts = [70, 70, 17, 32, 33, 47, 0, 70];
    let prompts = sharing_prompts(&system, &questions, &cuts);
    let abort = [2, 5];
    let without = run(
        load(&dir),
        &Run {
            caching: false,
            num_blocks: 128,
            budget: 512,
        },
        &prompts,
        24,
        &abort,
    );
    // 16 blocks of 16 cannot hold seven requests of ~100 tokens: preemption, chunked prefill.
    let with = run(
        load(&dir),
        &Run {
            caching: true,
            num_blocks: 16,
            budget: 48,
        },
        &prompts,
        24,
        &abort,
    );
    let preempted: u32 = with.iter().flatten().map(|(_, f)| f.num_preemptions).sum();
    assert!(preempted > 0, "the small pool forces preemption");
    check_same(&prompts, &with, &without);
}

#[test]
fn the_real_model_gives_the_same_greedy_outputs_with_and_without_the_cache() {
    let gguf = wayfinder_testkit::smollm2_gguf();
    let load = || {
        wayfinder_model::load(
            &gguf,
            &LoadOptions {
                dtype: None,
                max_model_len: Some(256),
            },
        )
        .expect("load the real model")
    };
    let text = wayfinder_model::load_text(&gguf).expect("text side");
    let encode = |s: &str| text.tokenizer.encode(s, false).expect("encode");
    let system = encode(
        "<|im_start|>system\nYou are a careful assistant for the harbour office of a small \
         fishing town. Answer in one short sentence, name the ship when you know it, never \
         guess a time of arrival, and send anyone asking about the weather to the coast guard \
         on channel sixteen. The office opens at seven and closes at six, except on \
         Sundays, when only the ferry desk is staffed.<|im_end|>\n",
    );
    assert!(system.len() > 4 * BLOCK, "{} tokens", system.len());
    let questions: Vec<Vec<u32>> = [
        "When does the ferry leave?",
        "Which ship is in dock two?",
        "Is the harbour open today?",
    ]
    .iter()
    .map(|q| {
        encode(&format!(
            "<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
        ))
    })
    .collect();
    // Kept short: the model crate's kernels run unoptimised in test builds.
    let cuts = [system.len(), system.len(), 33, 0, 48];
    let prompts = sharing_prompts(&system, &questions, &cuts);
    let abort = [3];
    let without = run(
        load(),
        &Run {
            caching: false,
            num_blocks: 64,
            budget: 512,
        },
        &prompts,
        4,
        &abort,
    );
    let with = run(
        load(),
        &Run {
            caching: true,
            num_blocks: 8,
            budget: 64,
        },
        &prompts,
        4,
        &abort,
    );
    let preempted: u32 = with.iter().flatten().map(|(_, f)| f.num_preemptions).sum();
    assert!(preempted > 0, "the small pool forces preemption");
    check_same(&prompts, &with, &without);
}
