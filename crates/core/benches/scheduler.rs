//! Scheduler and block-manager micro-benchmarks.
//!
//! `cargo bench -p wayfinder-core --bench scheduler`
//!
//! - `scheduler_step/256_running_1000_waiting`: one engine step's scheduling work — `schedule`,
//!   `commit` and one `append_token` per request that caught up — in a steady state of 256
//!   decoding requests (max_num_seqs) and 1,000 waiting ones. Requests finish after staggered
//!   lengths and each finished one is replaced by a new arrival, so admissions (and their prefill
//!   chunks) happen at the rate they would in a server.
//! - `scheduler_step_with_batch/256_running_1000_waiting`: the same step, also flattened into
//!   the executor's [`Batch`] — the engine's whole per-step CPU cost outside the model and
//!   sampling.
//! - `block_manager/allocate_free_4_blocks`: one allocate of 64 tokens (4 blocks) and its free.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use wayfinder_core::block_manager::BlockManager;
use wayfinder_core::scheduler::{Scheduler, SchedulerConfig};
use wayfinder_core::{Batch, EngineRequest, SeqId};

const RUNNING: usize = 256;
const WAITING: usize = 1000;
const PROMPT: usize = 64;

struct Workload {
    scheduler: Scheduler,
    next_id: u64,
}

impl Workload {
    fn new() -> Self {
        let config = SchedulerConfig {
            max_num_seqs: RUNNING,
            max_num_batched_tokens: 2048,
            max_model_len: 1024,
            block_size: 16,
            num_blocks: RUNNING * 1024 / 16,
            ..SchedulerConfig::default()
        };
        let mut w = Self {
            scheduler: Scheduler::new(config).expect("valid config"),
            next_id: 0,
        };
        for _ in 0..RUNNING + WAITING {
            w.arrive();
        }
        // Prefill everything that fits, until the running set is full and decoding.
        while w.scheduler.num_running() < RUNNING
            || w.scheduler.running().iter().any(|&id| {
                w.scheduler
                    .get(id)
                    .is_some_and(|s| s.num_output_tokens() == 0)
            })
        {
            w.step();
        }
        w
    }

    fn arrive(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        // Staggered lengths, so that a few requests finish and arrive every step.
        let max_tokens = 200 + (id * 37 % 300) as u32;
        // Distinct prompts: the prefix cache (on, the default) hashes and enters every full
        // block but finds nothing, its whole cost without its gain.
        let prompt = (0..PROMPT as u64).map(|i| (id * 131 + i) as u32).collect();
        let request = EngineRequest::builder(format!("r{id}"), prompt)
            .max_tokens(max_tokens)
            .build()
            .expect("valid request");
        self.scheduler.add(SeqId(id), request, 0.0);
    }

    fn step(&mut self) -> usize {
        self.step_inner(None)
    }

    /// A step that also flattens its plan into `batch`, as the engine does before executing.
    fn step_filling(&mut self, batch: &mut Batch) -> usize {
        self.step_inner(Some(batch))
    }

    fn step_inner(&mut self, batch: Option<&mut Batch>) -> usize {
        let out = self.scheduler.schedule(0.0);
        if let Some(batch) = batch {
            batch.fill(&out, &self.scheduler);
        }
        self.scheduler.commit(&out);
        let mut finished = 0;
        for s in &out.scheduled {
            let caught_up = self
                .scheduler
                .get(s.id)
                .is_some_and(|seq| seq.num_pending_tokens() == 0);
            if caught_up && self.scheduler.append_token(s.id, 7, &[], 0.0).is_some() {
                finished += 1;
            }
        }
        for _ in 0..finished {
            self.arrive();
        }
        out.scheduled.len()
    }
}

fn scheduler_step(c: &mut Criterion) {
    c.bench_function("scheduler_step/256_running_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut w = Workload::new();
            assert_eq!(w.scheduler.num_running(), RUNNING);
            assert!(w.scheduler.num_waiting() >= WAITING - RUNNING / 4);
            let start = Instant::now();
            for _ in 0..iters {
                black_box(w.step());
            }
            start.elapsed()
        });
    });
}

fn step_with_batch(c: &mut Criterion) {
    c.bench_function("scheduler_step_with_batch/256_running_1000_waiting", |b| {
        b.iter_custom(|iters| {
            let mut w = Workload::new();
            let mut batch = Batch::default();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(w.step_filling(&mut batch));
            }
            start.elapsed()
        });
    });
}

fn block_manager(c: &mut Criterion) {
    let mut bm = BlockManager::new(RUNNING * 64, 16);
    // A realistically fragmented pool: half the blocks held by many sequences.
    for i in 0..RUNNING as u64 {
        bm.allocate(SeqId(i), 512).expect("fits");
    }
    c.bench_function("block_manager/allocate_free_4_blocks", |b| {
        b.iter(|| {
            let seq = SeqId(u64::MAX);
            bm.allocate(seq, black_box(64)).expect("fits");
            black_box(bm.free(seq))
        });
    });
    c.bench_function("block_manager/append_slot_decode", |b| {
        let seq = SeqId(u64::MAX - 1);
        bm.free(seq);
        bm.allocate(seq, 1).expect("fits");
        let mut n = 1;
        b.iter(|| {
            // One decode token; every 16th takes a new block. Reset before the pool runs dry.
            if n == 4096 {
                bm.free(seq);
                bm.allocate(seq, 1).expect("fits");
                n = 1;
            }
            bm.append_slots(seq, 1).expect("fits");
            n += 1;
        });
    });
}

criterion_group!(benches, scheduler_step, step_with_batch, block_manager);
criterion_main!(benches);
