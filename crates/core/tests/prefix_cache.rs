//! The prefix cache through the engine, with the deterministic test executor: it reads each
//! request's context back through its block table, so a wrong shared block, a block evicted or
//! overwritten while in use, or a cached block whose KV was never written changes the tokens.

use std::time::Duration;

use wayfinder_core::testing::{JourneyLog, RecordingObserver, TestExecutor, TestExecutorConfig};
use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishStatus, FinishedOutput, JourneyEventKind,
    RequestOutput, RequestStream, SamplingParams, ScheduleKind, SchedulerConfig,
};

const VOCAB: usize = 64;
const BLOCK: usize = 16;

struct Setup {
    num_blocks: usize,
    budget: usize,
    caching: bool,
    step_delay: Duration,
}

impl Setup {
    fn executor(&self) -> TestExecutor {
        TestExecutor::new(TestExecutorConfig {
            vocab_size: VOCAB,
            num_slots: self.num_blocks * BLOCK,
            step_delay: self.step_delay,
            ..TestExecutorConfig::default()
        })
    }

    fn spawn(&self) -> (EngineHandle, JourneyLog) {
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: 64,
                max_num_batched_tokens: self.budget,
                max_model_len: (self.num_blocks * BLOCK).min(512),
                block_size: BLOCK,
                num_blocks: self.num_blocks,
                enable_prefix_caching: self.caching,
                ..SchedulerConfig::default()
            },
            eos_token_ids: Vec::new(),
            seed: Some(7),
        };
        let (recorder, log) = RecordingObserver::new();
        let handle =
            EngineHandle::spawn(config, Box::new(self.executor()), Some(Box::new(recorder)))
                .expect("spawn");
        (handle, log)
    }
}

fn tokens(seed: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((seed * 131 + j * 17 + j * j) % VOCAB) as u32)
        .collect()
}

fn greedy(id: &str, prompt: Vec<u32>, max_tokens: u32) -> EngineRequest {
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams::greedy())
        .max_tokens(max_tokens)
        .build()
        .expect("valid")
}

fn collect(mut stream: RequestStream) -> (Vec<u32>, FinishedOutput) {
    let mut out = Vec::new();
    while let Some(item) = stream.blocking_next() {
        match item {
            RequestOutput::Token(t) => out.push(t.token_id),
            RequestOutput::PromptLogprobs(_) => {}
            RequestOutput::Finished(f) => return (out, f),
        }
    }
    panic!("stream ended without Finished");
}

fn idle_blocks(engine: &EngineHandle) -> (usize, usize) {
    let s = engine.stats_blocking().expect("running");
    (s.num_free_blocks, s.num_total_blocks)
}

/// Prompts sharing a 100-token "system prompt" over lengths around block boundaries, some
/// identical, some sharing nothing.
fn shared_prompts() -> Vec<Vec<u32>> {
    let system = tokens(1, 100);
    let mut prompts = Vec::new();
    for (i, shared) in [0, 5, 15, 16, 17, 31, 32, 48, 64, 99, 100, 100, 96, 96]
        .into_iter()
        .enumerate()
    {
        let mut p = system[..shared].to_vec();
        // A 96-token prompt is exactly six blocks: the last one is recomputed.
        if shared != 96 {
            p.extend(tokens(10 + i, 3 + i % 20));
        }
        prompts.push(p);
    }
    prompts
}

/// Runs `prompts` in two waves (each request of the first wave alone, so that the second finds
/// a warm cache), aborting every request whose index is in `abort` after its first token.
fn run(
    setup: &Setup,
    prompts: &[Vec<u32>],
    abort: &[usize],
) -> Vec<Option<(Vec<u32>, FinishedOutput)>> {
    let (engine, _) = setup.spawn();
    let mut results = Vec::new();
    let (first, second) = prompts.split_at(prompts.len() / 2);
    for (i, p) in first.iter().enumerate() {
        let s = engine
            .add_request(greedy(&format!("w{i}"), p.clone(), 12))
            .expect("add");
        results.push(Some(collect(s)));
    }
    let streams: Vec<_> = second
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let id = format!("c{i}");
            engine.add_request(greedy(&id, p.clone(), 24)).expect("add")
        })
        .collect();
    for (i, mut s) in streams.into_iter().enumerate() {
        if abort.contains(&(first.len() + i)) {
            let _ = s.blocking_next();
            drop(s);
            results.push(None);
        } else {
            results.push(Some(collect(s)));
        }
    }
    let (free, total) = idle_blocks(&engine);
    assert_eq!(free, total, "every block is free (or evictable) when idle");
    engine.shutdown();
    results
}

#[test]
fn greedy_outputs_are_the_same_with_and_without_the_cache_across_preemptions_and_aborts() {
    let mut prompts = shared_prompts();
    prompts.extend(shared_prompts());
    let abort = [16, 19, 23];
    for (num_blocks, budget) in [(256, 512), (24, 48)] {
        let on = Setup {
            num_blocks,
            budget,
            caching: true,
            step_delay: Duration::ZERO,
        };
        let off = Setup {
            caching: false,
            ..on
        };
        let reference = on.executor();
        let with = run(&on, &prompts, &abort);
        let without = run(&off, &prompts, &abort);
        for (i, (p, (w, o))) in prompts.iter().zip(with.iter().zip(&without)).enumerate() {
            let (Some((wt, wf)), Some((ot, of))) = (w, o) else {
                assert!(abort.contains(&i));
                continue;
            };
            let n = wf.usage.completion_tokens;
            assert_eq!(wf.status, FinishStatus::Length, "request {i}");
            assert_eq!(wt, ot, "request {i}: the cache changed the output");
            assert_eq!(*wt, reference.expected_greedy(p, n), "request {i}");
            assert_eq!(of.usage.cached_tokens, 0);
            assert_eq!(of.prefix_cache_queries, 0, "the cache is off");
            assert_eq!(wf.prefix_cache_queries, p.len());
            let cap = (p.len() - 1) / BLOCK * BLOCK;
            assert!(
                wf.usage.cached_tokens <= cap,
                "request {i} leaves a token to compute"
            );
            assert_eq!(wf.usage.cached_tokens % BLOCK, 0, "whole blocks");
        }
        let done = with.iter().flatten();
        let cached: usize = done.clone().map(|(_, f)| f.usage.cached_tokens).sum();
        assert!(cached > 500, "the cache served {cached} tokens");
        if num_blocks == 24 {
            let preempted: u32 = done.map(|(_, f)| f.num_preemptions).sum();
            assert!(preempted > 0, "the small pool must force preemptions");
        }
    }
}

#[test]
fn the_usage_and_the_journey_report_cached_tokens_exactly() {
    let setup = Setup {
        num_blocks: 64,
        budget: 512,
        caching: true,
        step_delay: Duration::ZERO,
    };
    let (engine, log) = setup.spawn();
    let a = tokens(3, 70);
    let run = |id: &str, prompt: Vec<u32>| {
        collect(engine.add_request(greedy(id, prompt, 5)).expect("add")).1
    };
    // A leaves its prompt and output in the cache: 74 tokens computed, 4 full blocks.
    assert_eq!(run("a", a.clone()).usage.cached_tokens, 0);
    let mut b = a[..40].to_vec();
    b.extend(tokens(4, 10));
    let mut a_and_output = a.clone();
    a_and_output.extend(tokens(5, 30));
    // (prompt, cached): 40 shared tokens hold 2 full blocks; A's whole prompt gives 4 blocks
    // (64 tokens); a 64-token prompt leaves its last token, so its last block, to compute.
    let cases = [
        ("b", b, 32),
        ("c", a.clone(), 64),
        ("d", a[..64].to_vec(), 48),
        ("e", tokens(6, 70), 0),
        ("f", a_and_output, 64),
    ];
    for (id, prompt, cached) in cases {
        let len = prompt.len();
        let fin = run(id, prompt);
        assert_eq!(fin.usage.cached_tokens, cached, "{id}");
        assert_eq!(fin.usage.prompt_tokens, len);
        assert_eq!(fin.prefix_cache_queries, len, "{id}");
        let first = log
            .of(id)
            .into_iter()
            .find(|e| e.kind == JourneyEventKind::Scheduled(ScheduleKind::First))
            .expect("scheduled");
        assert_eq!(first.fields.prefix_cache_hit_tokens, cached, "{id}");
        assert_eq!(
            first.fields.prefill_done_tokens, cached,
            "cached tokens count as computed"
        );
    }
    // A request that owes its prompt's logprobs computes every prompt token: no lookup.
    let logprobs = EngineRequest::builder("g", a)
        .sampling(SamplingParams {
            prompt_logprobs: Some(0),
            ..SamplingParams::greedy()
        })
        .max_tokens(1)
        .build()
        .expect("valid");
    let fin = collect(engine.add_request(logprobs).expect("add")).1;
    assert_eq!((fin.usage.cached_tokens, fin.prefix_cache_queries), (0, 0));
    engine.shutdown();
}

#[test]
fn a_pool_full_of_cached_blocks_still_admits_new_requests() {
    // 12 blocks: each 60-token request with 8 outputs fills four, and leaves three cached.
    let setup = Setup {
        num_blocks: 12,
        budget: 64,
        caching: true,
        step_delay: Duration::ZERO,
    };
    let reference = setup.executor();
    let (engine, _) = setup.spawn();
    for round in 0..3 {
        let streams: Vec<_> = (0..6)
            .map(|i| {
                let p = tokens(100 * round + i, 60);
                let s = engine.add_request(greedy(&format!("{round}-{i}"), p.clone(), 8));
                (p, s.expect("add"))
            })
            .collect();
        for (p, s) in streams {
            let (out, fin) = collect(s);
            assert_eq!(fin.status, FinishStatus::Length);
            assert_eq!(out, reference.expected_greedy(&p, 8));
        }
        let (free, total) = idle_blocks(&engine);
        assert_eq!(free, total, "cached blocks count as free");
    }
    engine.shutdown();
}

#[test]
fn a_cache_salt_shares_cached_blocks_only_among_requests_with_the_same_salt() {
    let setup = Setup {
        num_blocks: 64,
        budget: 512,
        caching: true,
        step_delay: Duration::ZERO,
    };
    let (engine, _) = setup.spawn();
    let prompt = tokens(9, 50);
    let run = |id: &str, salt: Option<&str>| {
        let request = EngineRequest::builder(id, prompt.clone())
            .sampling(SamplingParams::greedy())
            .max_tokens(2)
            .cache_salt(salt.map(str::to_owned))
            .build()
            .expect("valid");
        collect(engine.add_request(request).expect("add"))
            .1
            .usage
            .cached_tokens
    };
    assert_eq!(run("plain", None), 0);
    assert_eq!(run("tenant-1", Some("t1")), 0, "another salt finds nothing");
    assert_eq!(
        run("tenant-1-again", Some("t1")),
        48,
        "the same salt finds its own"
    );
    assert_eq!(run("plain-again", None), 48);
    assert_eq!(run("tenant-2", Some("t2")), 0);
    engine.shutdown();
    for bad in [String::new(), "x".repeat(257)] {
        let built = EngineRequest::builder("r", vec![1])
            .cache_salt(Some(bad))
            .build();
        assert!(built.is_err_and(|e| e.to_string().contains("cache_salt")));
    }
}
