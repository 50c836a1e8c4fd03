//! The executor trait: one forward pass over one step's batch.
//!
//! A [`Batch`] flattens every scheduled token of every request — prefill chunks and decode
//! tokens alike — into one list, each token with its own position and KV slot, and gives each
//! request its block table and context length. The executor writes the new tokens' keys and
//! values into their slots, attends each request's queries over slots `0..context_len` of its own
//! block table, and returns one row of next-token logits for each token in every request's
//! [`BatchSeq::logits_rows`], in batch order. That is the last token of a request whose known
//! tokens are now all computed ([`BatchSeq::needs_logits`]: a next token is sampled from it),
//! preceded, for a request that asked for its prompt's logprobs, by the prompt tokens whose
//! logprobs are still owed.
//! Sampling is not the executor's job: [`crate::sampling`] does it for every executor alike.

use std::ops::Range;

use crate::block_manager::BlockId;
use crate::scheduler::{Scheduler, SchedulerOutput};
use crate::sequence::SeqId;

/// One request's part of a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSeq {
    /// The request.
    pub seq_id: SeqId,
    /// Its new tokens: `batch.token_ids[tokens]` (and the same range of positions and slots).
    pub tokens: Range<usize>,
    /// Tokens in its KV once this step's are written: attention spans positions `0..context_len`.
    pub context_len: usize,
    /// Its block table: `batch.block_tables[block_table]`.
    pub block_table: Range<usize>,
    /// Tokens of its prompt: a new token at a position below this is a prompt token, one at or
    /// above it a generated token (decoded, or recomputed after preemption). Executors may
    /// compute the two kinds with different precision; a token's kind never depends on how the
    /// step was batched or how much of the prompt came from the prefix cache.
    pub num_prompt_tokens: usize,
    /// Whether this step completes its known tokens, so that a next token is sampled from it.
    pub needs_logits: bool,
    /// The tokens (indices into `batch.token_ids`, within `tokens`) whose logits rows the
    /// executor returns: the last token when `needs_logits`, after any prompt tokens whose
    /// logprobs are owed. Contiguous, since prompt logprobs are owed only before any output.
    pub logits_rows: Range<usize>,
}

/// One step's work, flattened. Built by the engine; buffers are reused across steps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Slots per KV block.
    pub block_size: usize,
    /// Requests in batch order.
    pub seqs: Vec<BatchSeq>,
    /// New token ids of every request, concatenated.
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// KV slot of each token: `block * block_size + position % block_size`.
    pub slot_mapping: Vec<u32>,
    /// Every request's block table, concatenated.
    pub block_tables: Vec<BlockId>,
}

impl Batch {
    /// Total tokens in the batch.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
    /// Logits rows the executor returns.
    pub fn num_logits_rows(&self) -> usize {
        self.seqs.iter().map(|s| s.logits_rows.len()).sum()
    }
    /// The tokens whose logits rows are returned, in order (indices into `token_ids`).
    pub fn logits_tokens(&self) -> impl Iterator<Item = usize> + '_ {
        self.seqs.iter().flat_map(|s| s.logits_rows.clone())
    }
    /// Whether token `i` (an index into `token_ids`) of `seq` is a generated token rather than a
    /// prompt token; see [`BatchSeq::num_prompt_tokens`].
    pub fn is_generated(&self, seq: &BatchSeq, i: usize) -> bool {
        self.positions[i] as usize >= seq.num_prompt_tokens
    }
    /// A request's block table.
    pub fn block_table(&self, seq: &BatchSeq) -> &[BlockId] {
        &self.block_tables[seq.block_table.clone()]
    }

    /// Refills this batch with the step planned in `out`. Call before [`Scheduler::commit`].
    pub fn fill(&mut self, out: &SchedulerOutput, scheduler: &Scheduler) {
        let block_size = scheduler.block_manager().block_size();
        self.block_size = block_size;
        self.seqs.clear();
        self.token_ids.clear();
        self.positions.clear();
        self.slot_mapping.clear();
        self.block_tables.clear();
        for s in &out.scheduled {
            let seq = scheduler.get(s.id).expect("scheduled request is live");
            let table = scheduler
                .block_manager()
                .block_table(s.id)
                .expect("scheduled request has blocks");
            let start = seq.num_computed_tokens();
            let end = start + s.num_new_tokens;
            let tokens = self.token_ids.len()..self.token_ids.len() + s.num_new_tokens;
            self.token_ids.extend_from_slice(&seq.tokens()[start..end]);
            for pos in start..end {
                self.positions.push(pos as u32);
                let block = table[pos / block_size] as usize;
                self.slot_mapping
                    .push((block * block_size + pos % block_size) as u32);
            }
            let tables_start = self.block_tables.len();
            self.block_tables.extend_from_slice(table);
            let needs_logits = end == seq.tokens().len();
            let prompt_rows = seq.prompt_logits_rows(start..end);
            let to_index = |pos: usize| tokens.start + pos - start;
            let logits_rows = match (prompt_rows.is_empty(), needs_logits) {
                (true, true) => tokens.end - 1..tokens.end,
                (true, false) => tokens.end..tokens.end,
                // Owed prompt logprobs end at the prompt's second-last token, which is next to
                // the last when this step completes the prompt.
                (false, true) => to_index(prompt_rows.start)..tokens.end,
                (false, false) => to_index(prompt_rows.start)..to_index(prompt_rows.end),
            };
            debug_assert!(!needs_logits || prompt_rows.is_empty() || prompt_rows.end + 1 == end);
            self.seqs.push(BatchSeq {
                seq_id: s.id,
                tokens,
                context_len: end,
                block_table: tables_start..self.block_tables.len(),
                num_prompt_tokens: seq.num_prompt_tokens(),
                needs_logits,
                logits_rows,
            });
        }
    }
}

/// Next-token logits: one row of `vocab_size` values per request that needed them, in batch
/// order.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    data: Vec<f32>,
    vocab_size: usize,
}

impl Logits {
    /// Wraps `data`, which holds whole rows of `vocab_size` values.
    ///
    /// # Panics
    /// If `vocab_size` is 0 or does not divide `data.len()`.
    pub fn new(data: Vec<f32>, vocab_size: usize) -> Self {
        assert!(
            vocab_size > 0 && data.len().is_multiple_of(vocab_size),
            "ragged logits"
        );
        Self { data, vocab_size }
    }
    /// Row length.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.len() / self.vocab_size
    }
    /// Row `i`, mutable (sampling works in place).
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab_size..(i + 1) * self.vocab_size]
    }
}

/// A failed forward pass. The engine ends the step's requests with status `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutorError {
    /// The batch refers to what the executor does not have: a block size, KV slot, block or
    /// position out of its range.
    #[error("executor failed: {0}")]
    InvalidBatch(String),
    /// The executor returned another number of logits rows than the batch asks for.
    #[error("executor failed: returned {rows} logits rows of {vocab} for {expected} requests")]
    WrongLogits {
        /// Rows returned.
        rows: usize,
        /// Their width.
        vocab: usize,
        /// Rows the batch needs.
        expected: usize,
    },
    /// The computation itself failed.
    #[error("executor failed: {0}")]
    Failed(String),
}

/// Runs the model.
pub trait Executor: Send {
    /// Length of a logits row.
    fn vocab_size(&self) -> usize;

    /// Computes one step: writes the batch's KV, returns logits for the requests that need them
    /// (exactly [`Batch::num_logits_rows`] rows).
    fn execute(&mut self, batch: &Batch) -> Result<Logits, ExecutorError>;
}
