//! Deterministic test doubles for engine and API tests (feature `testing`). Never what
//! `wayfinder serve` runs.
//!
//! [`TestExecutor`] behaves like a model with a real paged KV cache: it writes every batch token
//! into its slot and computes a request's next token from the tokens it *reads back through the
//! request's block table*. So the output depends only on the token history, as a model's does —
//! the same whether a request runs alone, batched, chunked or after a preemption — while any
//! scheduling or block-table bug (a wrong slot, a block freed while in use, a missed chunk)
//! changes the tokens and fails the test.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::executor::{Batch, Executor, ExecutorError, Logits};
use crate::journey::{JourneyEvent, JourneyEventKind, JourneyFields, JourneyObserver};
use crate::request::Carrier;
use crate::sequence::SeqId;

/// Settings of a [`TestExecutor`].
#[derive(Debug, Clone, PartialEq)]
pub struct TestExecutorConfig {
    /// Logits row length.
    pub vocab_size: usize,
    /// KV slots (`num_blocks * block_size` of the engine it runs in).
    pub num_slots: usize,
    /// Sleep per step, to make steps take time in API tests.
    pub step_delay: Duration,
    /// Tokens never chosen by greedy decoding (e.g. the eos token, so that a test controls
    /// when it appears).
    pub avoid_tokens: Vec<u32>,
    /// Fail the step whose number (from 1) is listed.
    pub fail_on_steps: Vec<u64>,
    /// Panic in the step whose number (from 1) is listed (a bug, as opposed to a failure).
    pub panic_on_steps: Vec<u64>,
}

impl Default for TestExecutorConfig {
    fn default() -> Self {
        Self {
            vocab_size: 64,
            num_slots: 2048 * 16,
            step_delay: Duration::ZERO,
            avoid_tokens: Vec::new(),
            fail_on_steps: Vec::new(),
            panic_on_steps: Vec::new(),
        }
    }
}

/// A scripted executor with a real KV slot store; see the module docs.
#[derive(Debug)]
pub struct TestExecutor {
    config: TestExecutorConfig,
    slots: Vec<u32>,
    steps: u64,
}

/// Marks a slot that was never written.
const EMPTY: u32 = u32::MAX;

impl TestExecutor {
    /// A test executor with `config`.
    pub fn new(config: TestExecutorConfig) -> Self {
        Self {
            slots: vec![EMPTY; config.num_slots],
            config,
            steps: 0,
        }
    }

    /// The greedy next token after `context`: the argmax of [`TestExecutor::logits_for`].
    pub fn next_token(&self, context: &[u32]) -> u32 {
        let row = self.logits_for(context);
        crate::sampling::argmax(&row)
    }

    /// The logits row for a request whose tokens are `context`: a peak at a hash of the whole
    /// context, a smaller one at the next token, and low values elsewhere, so that sampling
    /// parameters have something to act on.
    pub fn logits_for(&self, context: &[u32]) -> Vec<f32> {
        let v = self.config.vocab_size;
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &t in context {
            hash = (hash ^ u64::from(t)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut row: Vec<f32> = (0..v)
            .map(|i| ((hash.rotate_left(i as u32 % 64) % 1000) as f32) / 1000.0)
            .collect();
        let mut top = (hash % v as u64) as usize;
        while self.config.avoid_tokens.contains(&(top as u32)) {
            top = (top + 1) % v;
        }
        row[top] = 8.0;
        let second = (top + 1) % v;
        if !self.config.avoid_tokens.contains(&(second as u32)) {
            row[second] = 6.0;
        }
        for &t in &self.config.avoid_tokens {
            if let Some(x) = row.get_mut(t as usize) {
                *x = -8.0;
            }
        }
        row
    }

    /// Greedy continuation of `prompt` by `n` tokens, as the engine should produce it.
    pub fn expected_greedy(&self, prompt: &[u32], n: usize) -> Vec<u32> {
        let mut tokens = prompt.to_vec();
        for _ in 0..n {
            tokens.push(self.next_token(&tokens));
        }
        tokens.split_off(prompt.len())
    }
}

impl Executor for TestExecutor {
    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn execute(&mut self, batch: &Batch) -> Result<Logits, ExecutorError> {
        self.steps += 1;
        if !self.config.step_delay.is_zero() {
            std::thread::sleep(self.config.step_delay);
        }
        assert!(
            !self.config.panic_on_steps.contains(&self.steps),
            "scripted panic at step {}",
            self.steps
        );
        if self.config.fail_on_steps.contains(&self.steps) {
            return Err(ExecutorError::Failed(format!(
                "scripted failure at step {}",
                self.steps
            )));
        }
        for (i, &slot) in batch.slot_mapping.iter().enumerate() {
            let cell = self
                .slots
                .get_mut(slot as usize)
                .ok_or_else(|| ExecutorError::InvalidBatch(format!("slot {slot} out of range")))?;
            *cell = batch.token_ids[i];
        }
        let mut data = Vec::with_capacity(batch.num_logits_rows() * self.config.vocab_size);
        let bs = batch.block_size;
        for (seq, row) in batch
            .seqs
            .iter()
            .flat_map(|s| s.logits_rows.clone().map(move |r| (s, r)))
        {
            let table = batch.block_table(seq);
            // The row's token sits at this position; its logits see the context up to it.
            let context_len = seq.context_len - (seq.tokens.end - row) + 1;
            let context = (0..context_len)
                .map(|pos| {
                    let slot = table[pos / bs] as usize * bs + pos % bs;
                    match self.slots[slot] {
                        EMPTY => Err(ExecutorError::InvalidBatch(format!(
                            "{:?} reads unwritten slot {slot}",
                            seq.seq_id
                        ))),
                        t => Ok(t),
                    }
                })
                .collect::<Result<Vec<u32>, _>>()?;
            data.extend(self.logits_for(&context));
        }
        Ok(Logits::new(data, self.config.vocab_size))
    }
}

/// A journey event as recorded by [`RecordingObserver`].
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The engine's id.
    pub seq_id: SeqId,
    /// The client's id.
    pub request_id: String,
    /// The carrier it came with.
    pub carrier: Carrier,
    /// The event.
    pub kind: JourneyEventKind,
    /// Its fields.
    pub fields: JourneyFields,
}

/// Records every journey event; clone the [`JourneyLog`] before handing the observer over.
#[derive(Debug, Clone, Default)]
pub struct RecordingObserver {
    log: JourneyLog,
}

/// Shared view of what a [`RecordingObserver`] saw.
#[derive(Debug, Clone, Default)]
pub struct JourneyLog(Arc<Mutex<Vec<RecordedEvent>>>);

impl JourneyLog {
    /// Every event so far, in order.
    pub fn events(&self) -> MutexGuard<'_, Vec<RecordedEvent>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The events of one request, in order.
    pub fn of(&self, request_id: &str) -> Vec<RecordedEvent> {
        self.events()
            .iter()
            .filter(|e| e.request_id == request_id)
            .cloned()
            .collect()
    }
}

impl RecordingObserver {
    /// An observer and the log it writes to.
    pub fn new() -> (Self, JourneyLog) {
        let log = JourneyLog::default();
        (Self { log: log.clone() }, log)
    }
}

impl JourneyObserver for RecordingObserver {
    fn on_event(&mut self, event: &JourneyEvent<'_>) {
        self.log.events().push(RecordedEvent {
            seq_id: event.seq_id,
            request_id: event.request_id.to_owned(),
            carrier: event.carrier.clone(),
            kind: event.kind,
            fields: event.fields,
        });
    }
}
