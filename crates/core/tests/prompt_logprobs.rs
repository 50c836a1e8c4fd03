//! Prompt logprobs (`SamplingParams::prompt_logprobs`) through the engine: every prompt token
//! after the first gets exactly one entry, equal to the reference model's, across chunked
//! prefill and preemption; `max_tokens: 0` ends after the prefill.

use wayfinder_core::sampling::TokenLogprobs;
use wayfinder_core::testing::{TestExecutor, TestExecutorConfig};
use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishStatus, FinishedOutput, RequestOutput,
    SamplingParams, SchedulerConfig,
};

const VOCAB: usize = 64;

fn executor_config(num_slots: usize) -> TestExecutorConfig {
    TestExecutorConfig {
        vocab_size: VOCAB,
        num_slots,
        ..TestExecutorConfig::default()
    }
}

fn spawn(num_blocks: usize, budget: usize, max_model_len: usize) -> EngineHandle {
    let block_size = 8;
    let config = EngineConfig {
        scheduler: SchedulerConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: budget,
            max_model_len,
            block_size,
            num_blocks,
            ..SchedulerConfig::default()
        },
        eos_token_ids: Vec::new(),
        seed: Some(1),
    };
    let executor = TestExecutor::new(executor_config(num_blocks * block_size));
    EngineHandle::spawn(config, Box::new(executor), None).expect("spawn")
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 13 + j * 5 + j * j) % VOCAB) as u32)
        .collect()
}

fn request(id: &str, prompt: Vec<u32>, top: u32, max_tokens: u32) -> EngineRequest {
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams {
            prompt_logprobs: Some(top),
            ..SamplingParams::greedy()
        })
        .max_tokens(max_tokens)
        .build()
        .expect("valid")
}

/// What a stream said: prompt logprobs, sampled tokens, the end; in the order the contract
/// promises (every prompt logprob before any token).
fn collect(
    engine: &EngineHandle,
    req: EngineRequest,
) -> (Vec<TokenLogprobs>, Vec<u32>, FinishedOutput) {
    let mut stream = engine.add_request(req).expect("add");
    let (mut prompt_lps, mut tokens) = (Vec::new(), Vec::new());
    while let Some(out) = stream.blocking_next() {
        match out {
            RequestOutput::PromptLogprobs(entries) => {
                assert!(tokens.is_empty(), "prompt logprobs after a token");
                assert!(!entries.is_empty(), "an empty piece");
                prompt_lps.extend(entries);
            }
            RequestOutput::Token(t) => tokens.push(t.token_id),
            RequestOutput::Finished(f) => return (prompt_lps, tokens, f),
        }
    }
    panic!("no Finished");
}

/// The reference: the log-softmax of the test model's logits after each prefix.
fn expected(prompt: &[u32]) -> Vec<Vec<f32>> {
    let reference = TestExecutor::new(executor_config(1));
    (1..prompt.len())
        .map(|i| {
            let logits = reference.logits_for(&prompt[..i]);
            let max = logits.iter().copied().fold(f32::MIN, f32::max);
            let lse = max + logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
            logits.iter().map(|l| l - lse).collect()
        })
        .collect()
}

/// Each entry is the prompt token's reference logprob, with the `top` most likely tokens (any
/// of equal ones) in order.
fn assert_close(got: &[TokenLogprobs], prompt: &[u32], top: usize) {
    let want = expected(prompt);
    assert_eq!(
        got.len(),
        want.len(),
        "one entry per prompt token after the first"
    );
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let close = |a: f32, b: f32| (a - b).abs() < 1e-4;
        assert!(
            close(g.logprob, w[prompt[i + 1] as usize]),
            "token {}: {g:?}",
            i + 1
        );
        assert_eq!(g.top.len(), top);
        let mut sorted = w.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for (k, &(id, lp)) in g.top.iter().enumerate() {
            assert!(
                close(lp, w[id as usize]) && close(lp, sorted[k]),
                "token {}: {g:?}",
                i + 1
            );
        }
    }
}

#[test]
fn max_tokens_zero_returns_the_prompts_logprobs_over_chunked_prefill() {
    // A budget of 16 tokens splits the 50-token prompt into four chunks.
    let engine = spawn(64, 16, 256);
    let p = prompt(1, 50);
    let (lps, tokens, fin) = collect(&engine, request("a", p.clone(), 3, 0));
    assert_close(&lps, &p, 3);
    assert!(tokens.is_empty());
    assert_eq!(fin.status, FinishStatus::Length);
    assert_eq!(
        (fin.usage.prompt_tokens, fin.usage.completion_tokens),
        (50, 0)
    );
    assert_eq!(fin.timestamps.first_token, None);
    // A prompt that fills the whole context is fine when nothing is generated after it.
    let full = prompt(2, 256);
    let (lps, _, fin) = collect(&engine, request("b", full.clone(), 0, 0));
    assert_eq!(fin.status, FinishStatus::Length);
    assert_close(&lps, &full, 0);
    let s = engine.stats_blocking().expect("running");
    assert_eq!(s.num_free_blocks, s.num_total_blocks);
    engine.shutdown();
}

#[test]
fn prompt_logprobs_then_the_same_tokens_as_without() {
    let engine = spawn(64, 7, 256);
    let p = prompt(3, 23);
    let (lps, tokens, fin) = collect(&engine, request("a", p.clone(), 2, 5));
    assert_close(&lps, &p, 2);
    assert_eq!(
        tokens,
        TestExecutor::new(executor_config(1)).expected_greedy(&p, 5)
    );
    assert_eq!(fin.status, FinishStatus::Length);
    engine.shutdown();
}

#[test]
fn preemption_sends_no_prompt_logprob_twice() {
    // 12 blocks of 8 slots for eight 40-token prompts that each grow by 20: preemptions.
    let engine = spawn(12, 24, 96);
    let prompts: Vec<_> = (0..8).map(|i| prompt(i, 40)).collect();
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let stream = engine
                .add_request(request(&format!("r{i}"), p.clone(), 1, 20))
                .expect("add");
            std::thread::spawn(move || {
                let mut stream = stream;
                let (mut lps, mut tokens) = (Vec::new(), Vec::new());
                while let Some(out) = stream.blocking_next() {
                    match out {
                        RequestOutput::PromptLogprobs(e) => lps.extend(e),
                        RequestOutput::Token(t) => tokens.push(t.token_id),
                        RequestOutput::Finished(f) => return (lps, tokens, f),
                    }
                }
                panic!("no Finished");
            })
        })
        .collect();
    let reference = TestExecutor::new(executor_config(1));
    let mut preemptions = 0;
    for (h, p) in handles.into_iter().zip(&prompts) {
        let (lps, tokens, fin) = h.join().expect("reader");
        assert_close(&lps, p, 1);
        assert_eq!(tokens, reference.expected_greedy(p, 20));
        preemptions += fin.num_preemptions;
    }
    assert!(preemptions > 0, "the small pool must force preemptions");
    engine.shutdown();
}
