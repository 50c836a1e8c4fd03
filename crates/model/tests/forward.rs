//! The batched paged forward pass against a plain sequential reference, in f32, on small random
//! models of every architecture generated inside the test.

mod reference;

use std::path::Path;

use reference::Reference;
use wayfinder_core::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use wayfinder_core::{Batch, EngineRequest, Executor, SeqId};
use wayfinder_model::arch::Architecture;
use wayfinder_model::synth::{SynthSpec, write_model};
use wayfinder_model::{Dtype, LoadOptions, ModelExecutor};

/// The reference rounds keys and values to f16 as the KV cache does, but the f32 kernels' keys
/// sit a few last bits away from its f64 ones, and now and then that puts one on the other side
/// of a rounding boundary: one f16 step (~5e-4 relative) in one key or value. Mistakes in the
/// forward pass show as 1e-2 and more.
const TOLERANCE: f32 = 1e-3;

struct Harness {
    reference: Reference,
    executor: ModelExecutor,
    scheduler: Scheduler,
    batch: Batch,
}

impl Harness {
    fn new(dir: &Path, spec: &SynthSpec, budget: usize, num_blocks: usize) -> Self {
        write_model(dir, spec, 7, Dtype::F32, None).expect("write model");
        let model = wayfinder_model::load(
            dir,
            &LoadOptions {
                dtype: Some(Dtype::F32),
                max_model_len: Some(256),
            },
        )
        .expect("load");
        let block_size = 4;
        let executor = ModelExecutor::new(model.decoder, num_blocks, block_size);
        let scheduler = Scheduler::new(SchedulerConfig {
            max_num_seqs: 16,
            max_num_batched_tokens: budget,
            max_model_len: 64,
            block_size,
            num_blocks,
            ..SchedulerConfig::default()
        })
        .expect("config");
        Self {
            reference: Reference::load(dir),
            executor,
            scheduler,
            batch: Batch::default(),
        }
    }

    fn add(&mut self, id: u64, prompt: Vec<u32>) {
        let req = EngineRequest::builder(format!("r{id}"), prompt)
            .max_tokens(32)
            .build()
            .expect("valid");
        self.scheduler.add(SeqId(id), req, 0.0);
    }

    /// Runs one step; checks every logits row against the reference; appends each request's
    /// greedy token. Returns the plan.
    fn step(&mut self) -> SchedulerOutput {
        let out = self.scheduler.schedule(0.0);
        self.batch.fill(&out, &self.scheduler);
        let mut logits = self.executor.execute(&self.batch).expect("forward");
        self.scheduler.commit(&out);
        let sampled: Vec<SeqId> = self
            .batch
            .seqs
            .iter()
            .filter(|s| s.needs_logits)
            .map(|s| s.seq_id)
            .collect();
        for (row, id) in sampled.into_iter().enumerate() {
            let tokens = self.scheduler.get(id).expect("live").tokens().to_vec();
            let want = self.reference.logits(&tokens);
            let got = logits.row_mut(row);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst < TOLERANCE,
                "{id:?} after {} tokens: max |Δ| = {worst}",
                tokens.len()
            );
            let next = wayfinder_core::sampling::argmax(got);
            self.scheduler.append_token(id, next, &[], 0.0);
        }
        out
    }
}

fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (seed * 97 + i * 31 + 5) % 290)
        .collect()
}

fn every_architecture() -> Vec<SynthSpec> {
    let mut qwen3 = SynthSpec::tiny(Architecture::Qwen3);
    qwen3.head_dim = Some(24);
    let mut llama31 = SynthSpec::tiny(Architecture::Llama);
    llama31.rope_scaling = Some(serde_json::json!({
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64
    }));
    llama31.tie_word_embeddings = true;
    let mut mistral = SynthSpec::tiny(Architecture::Mistral);
    mistral.sliding_window = Some(6);
    vec![
        SynthSpec::tiny(Architecture::Llama),
        llama31,
        mistral,
        SynthSpec::tiny(Architecture::Qwen2),
        qwen3,
    ]
}

#[test]
fn one_prompt_then_decode_matches_the_reference() {
    for spec in every_architecture() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::new(dir.path(), &spec, 64, 64);
        h.add(1, prompt(1, 11));
        let first = h.step();
        assert_eq!(first.scheduled[0].num_new_tokens, 11);
        for _ in 0..4 {
            let out = h.step();
            assert_eq!(out.scheduled[0].num_new_tokens, 1, "decode");
        }
    }
}

#[test]
fn several_prompts_of_different_lengths_in_one_step() {
    for spec in every_architecture() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut h = Harness::new(dir.path(), &spec, 128, 64);
        for (id, len) in [(1, 3), (2, 17), (3, 1), (4, 9)] {
            h.add(id, prompt(id as u32, len));
        }
        let out = h.step();
        assert_eq!(out.scheduled.len(), 4);
        h.step();
    }
}

#[test]
fn chunked_prefill_and_mixed_prefill_decode_steps() {
    for spec in every_architecture() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A budget of 8 splits a 21-token prompt into 8 + 8 + 5.
        let mut h = Harness::new(dir.path(), &spec, 8, 64);
        h.add(1, prompt(1, 3));
        h.step();
        h.add(2, prompt(2, 21));
        let mut mixed = false;
        for _ in 0..6 {
            let out = h.step();
            let decode = out.scheduled.iter().any(|s| s.num_new_tokens == 1);
            let prefill = out.scheduled.iter().any(|s| s.num_new_tokens > 1);
            mixed |= decode && prefill;
        }
        assert!(mixed, "some step mixed a prefill chunk with a decode token");
    }
}
