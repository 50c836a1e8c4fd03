//! What the engine protocol's tests share: an engine on the deterministic test executor, and
//! the `EngineInfo` a server would announce for it.

#![allow(dead_code)] // each test binary uses its own part

use std::time::Duration;

use wayfinder_core::testing::{TestExecutor, TestExecutorConfig};
use wayfinder_core::{EngineConfig, EngineHandle, SchedulerConfig};
use wayfinder_ipc::EngineInfo;

/// Tokens per KV block in every test engine.
pub(crate) const BLOCK_SIZE: usize = 16;

/// A test engine's size and pace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TestEngine {
    pub(crate) vocab_size: usize,
    /// KV blocks; the context is the whole pool.
    pub(crate) num_blocks: usize,
    /// Sleep per step.
    pub(crate) step_delay: Duration,
}

impl TestEngine {
    /// The engine, running, with the info a server would announce for it.
    pub(crate) fn spawn(self) -> (EngineHandle, EngineInfo) {
        let max_model_len = self.num_blocks * BLOCK_SIZE;
        let executor = TestExecutor::new(TestExecutorConfig {
            vocab_size: self.vocab_size,
            num_slots: max_model_len,
            step_delay: self.step_delay,
            ..TestExecutorConfig::default()
        });
        let engine = EngineHandle::spawn(
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: 8,
                    max_num_batched_tokens: 256,
                    max_model_len,
                    block_size: BLOCK_SIZE,
                    num_blocks: self.num_blocks,
                    ..SchedulerConfig::default()
                },
                eos_token_ids: Vec::new(),
                seed: Some(1),
            },
            Box::new(executor),
            None,
        )
        .expect("engine");
        let info = EngineInfo {
            pid: std::process::id(),
            max_model_len,
            num_blocks: self.num_blocks,
            block_size: BLOCK_SIZE,
        };
        (engine, info)
    }
}
