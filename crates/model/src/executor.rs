//! The model executor: a [`Decoder`] and its paged KV store behind the engine's [`Executor`]
//! trait. This is what `wayfinder serve` runs.

use wayfinder_core::{Batch, Executor, ExecutorError, Logits};

use crate::arch::ModelConfig;
use crate::decoder::Decoder;
use crate::error::ModelError;
pub use crate::kernels::MAX_BLOCK as MAX_BLOCK_SIZE;
use crate::kernels::Team;
use crate::kv_store::{KvGeometry, PagedKvStore};

/// How big the KV cache is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCacheSize {
    /// Exactly this many blocks.
    Blocks(usize),
    /// As many blocks as fit in this many bytes.
    Bytes(u64),
}

impl KvCacheSize {
    /// Blocks of `block_size` tokens this size gives for `config`.
    pub fn num_blocks(self, config: &ModelConfig, block_size: usize) -> usize {
        match self {
            Self::Blocks(n) => n,
            Self::Bytes(bytes) => {
                let per_block =
                    geometry(config, 1, block_size).bytes_per_token(config.num_layers) * block_size;
                (bytes / per_block as u64) as usize
            }
        }
    }
}

fn geometry(config: &ModelConfig, num_blocks: usize, block_size: usize) -> KvGeometry {
    KvGeometry {
        num_blocks,
        block_size,
        num_kv_heads: config.num_kv_heads,
        head_dim: config.head_dim,
    }
}

/// Runs a decoder over engine batches.
///
/// The forward pass runs on the executor's own [`Team`] of threads (one per core, or
/// `RAYON_NUM_THREADS`), the engine thread being its first member; the team stays hot across
/// the ~10 parallel operations of every layer.
#[derive(Debug)]
pub struct ModelExecutor {
    decoder: Decoder,
    kv: PagedKvStore,
    team: Team,
}

impl ModelExecutor {
    /// An executor with a KV store of `num_blocks` blocks of `block_size` slots; an error when
    /// `block_size` is not one attention supports ([`Self::check_block_size`]) or the OS
    /// refuses the store's memory.
    pub fn try_new(
        decoder: Decoder,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, ModelError> {
        Self::check_block_size(block_size)?;
        let g = geometry(decoder.config(), num_blocks, block_size);
        let kv = PagedKvStore::try_new(g, decoder.config().num_layers)?;
        Ok(Self {
            decoder,
            kv,
            team: Team::per_core(),
        })
    }

    /// As [`Self::try_new`], for sizes known to be good (tests, benchmarks).
    ///
    /// # Panics
    /// Where [`Self::try_new`] returns an error.
    pub fn new(decoder: Decoder, num_blocks: usize, block_size: usize) -> Self {
        Self::try_new(decoder, num_blocks, block_size).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Whether attention supports `block_size`.
    pub fn check_block_size(block_size: usize) -> Result<(), ModelError> {
        if (1..=MAX_BLOCK_SIZE).contains(&block_size) {
            Ok(())
        } else {
            Err(ModelError::InvalidConfig(format!(
                "block size {block_size} is not supported; use 1 to {MAX_BLOCK_SIZE} (16 is best)"
            )))
        }
    }

    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Bytes of KV cache held.
    pub fn kv_cache_bytes(&self) -> usize {
        let g = self.kv.geometry();
        g.bytes_per_token(self.decoder.config().num_layers) * g.num_blocks * g.block_size
    }
}

impl Executor for ModelExecutor {
    fn vocab_size(&self) -> usize {
        self.decoder.config().vocab_size
    }

    fn execute(&mut self, batch: &Batch) -> Result<Logits, ExecutorError> {
        let g = *self.kv.geometry();
        if batch.block_size != g.block_size {
            return Err(ExecutorError::InvalidBatch(format!(
                "batch block size {} differs from the KV store's {}",
                batch.block_size, g.block_size
            )));
        }
        let slots = g.num_blocks * g.block_size;
        if let Some(&s) = batch.slot_mapping.iter().find(|&&s| s as usize >= slots) {
            return Err(ExecutorError::InvalidBatch(format!(
                "slot {s} beyond the KV store's {slots}"
            )));
        }
        if let Some(&b) = batch
            .block_tables
            .iter()
            .find(|&&b| b as usize >= g.num_blocks)
        {
            return Err(ExecutorError::InvalidBatch(format!(
                "block {b} beyond the KV store's {}",
                g.num_blocks
            )));
        }
        let max = self.decoder.max_positions();
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= max) {
            return Err(ExecutorError::InvalidBatch(format!(
                "position {p} beyond the rotary table's {max}"
            )));
        }
        let logits = self.decoder.forward(batch, &mut self.kv, &self.team);
        Ok(Logits::new(logits, self.vocab_size()))
    }
}
