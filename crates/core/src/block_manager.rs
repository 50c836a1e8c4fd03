//! The paged KV cache's block manager: which fixed-size blocks of KV slots each sequence holds,
//! and the prefix cache — full blocks kept, findable by content, after their owners are gone.
//!
//! The KV cache is `num_blocks` blocks of `block_size` token slots each. A sequence's keys and
//! values live in the blocks of its *block table*, in order: token `i` of the sequence is in slot
//! `i % block_size` of block `table[i / block_size]`. The executor reads and writes KV through
//! these tables; this structure only does the bookkeeping.
//!
//! # Prefix caching
//! Once a table's block is full and its KV computed, [`BlockManager::cache_blocks`] enters it
//! in the cache index under its chained content hash ([`crate::block_hash`]), keeping a copy of
//! its tokens and its parent's hash. [`BlockManager::find_cached_prefix`] finds the longest run
//! of a new sequence's leading blocks in the index (checking each one's tokens and parent, so a
//! hash collision can only miss), and [`BlockManager::allocate_with_prefix`] puts them at the
//! head of its table. A block is shared by reference count; it is written only while exactly
//! one table holds it and it is not yet cached (a sequence writes at positions past its
//! computed tokens, and a cached block is full and computed). When its last holder frees it, a
//! cached block joins the *evictable* list (least recently freed first out; a table's blocks
//! are freed tail first, so shared heads outlive private tails) and stays findable until an
//! allocation finds no uncached free block and evicts it.
//!
//! # Invariants
//! After every public call:
//! 1. every block id in `0..num_blocks` is in exactly one of: the free stack (no holder, not
//!    cached), the evictable list (no holder, cached), or one or more block tables — its
//!    reference count being the number of tables holding it, and no table holding it twice;
//! 2. the index maps a hash to a block exactly when that block is cached under that hash, and a
//!    cached block's hash is the hash of its parent's hash and its stored tokens;
//! 3. a table holding `n` tokens has exactly `ceil(n / block_size)` blocks;
//! 4. calls are all-or-nothing: one that returns an error changes nothing.
//!
//! Every verb costs O(blocks touched) plus hash-map and ordered-map operations: the free list is
//! a stack, the evictable list a `BTreeMap` by release tick, tables are vectors, and nothing
//! scans the pool. [`BlockManager::check_invariants`] (in `block_manager_invariants.rs`)
//! verifies 1–3 in O(num_blocks) for tests.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use crate::block_hash::{BlockHash, BlockHasher};
use crate::sequence::SeqId;

/// Index of a block in the KV cache.
pub type BlockId = u32;

/// The default number of token slots per block.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// Why an allocation could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// Not enough free blocks.
    #[error("out of KV blocks: need {needed}, {free} free")]
    OutOfBlocks {
        /// Blocks the call needed.
        needed: usize,
        /// Blocks that were free.
        free: usize,
    },
    /// `allocate` on a sequence that already has a table.
    #[error("sequence {0:?} already has a block table")]
    AlreadyAllocated(SeqId),
    /// `append_slots` on a sequence without a table.
    #[error("sequence {0:?} has no block table")]
    NotAllocated(SeqId),
    /// A prefix given to `allocate_with_prefix` holds a block that is not cached (or twice).
    #[error("block {0} is not a cached block of this prefix")]
    NotCached(BlockId),
}

/// What [`BlockManager::find_cached_prefix`] and [`BlockManager::cache_blocks`] need of a
/// sequence: its tokens and the chained hashes of its full blocks.
#[derive(Debug, Clone, Copy)]
pub struct PrefixKey<'a> {
    /// The parent of its first block ([`BlockHasher::root`]).
    pub root: BlockHash,
    /// Hashes of its leading full blocks, in order (may cover fewer blocks than `tokens` fill).
    pub hashes: &'a [BlockHash],
    /// Its tokens.
    pub tokens: &'a [u32],
}

#[derive(Debug, Default)]
struct BlockTable {
    blocks: Vec<BlockId>,
    num_tokens: usize,
    /// Leading blocks already cached or offered to the cache: [`BlockManager::cache_blocks`]
    /// goes on from here.
    num_cache_checked: usize,
}

/// A cached block's identity: its hash, its parent's, and its release tick while evictable.
#[derive(Debug, Clone, Copy)]
struct CacheEntry {
    hash: BlockHash,
    parent: BlockHash,
    /// Set while the block is on the evictable list: its key there.
    evictable_at: Option<u64>,
}

/// Owns the free stack, the prefix cache and every sequence's block table. See the module docs
/// for the invariants.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    /// Uncached blocks with no holder; a stack, so the most recently freed is reused first.
    free: Vec<BlockId>,
    /// Cached blocks with no holder, by release tick: the first is evicted first.
    evictable: BTreeMap<u64, BlockId>,
    next_tick: u64,
    /// Per block: how many tables hold it.
    refs: Vec<u32>,
    /// Per block: its cache entry while cached.
    entries: Vec<Option<CacheEntry>>,
    /// Per block: its tokens while cached (`block_size` each; allocated on first use).
    cached_tokens: Vec<u32>,
    index: HashMap<BlockHash, BlockId>,
    hasher: BlockHasher,
    tables: HashMap<SeqId, BlockTable>,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` slots, all free, with an empty cache.
    ///
    /// # Panics
    /// If `block_size` is 0 or `num_blocks` does not fit a [`BlockId`].
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block_size must be positive");
        assert!(
            BlockId::try_from(num_blocks).is_ok(),
            "num_blocks {num_blocks} exceeds the block id range"
        );
        Self {
            block_size,
            num_blocks,
            // Reversed so that block 0 is handed out first.
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            next_tick: 0,
            refs: vec![0; num_blocks],
            entries: vec![None; num_blocks],
            cached_tokens: Vec::new(),
            index: HashMap::default(),
            hasher: BlockHasher::new(),
            tables: HashMap::default(),
        }
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }
    /// Blocks in the pool.
    pub fn num_total_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Blocks an allocation can take: free ones and evictable cached ones.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len() + self.evictable.len()
    }
    /// Blocks held by some sequence.
    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks - self.num_free_blocks()
    }
    /// Blocks in the prefix cache (held or evictable).
    pub fn num_cached_blocks(&self) -> usize {
        self.index.len()
    }
    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }
    /// The hasher whose [`BlockHash`]es this cache is keyed by.
    pub fn hasher(&self) -> &BlockHasher {
        &self.hasher
    }

    /// Whether a new table for `num_tokens` tokens would fit now.
    pub fn can_allocate(&self, num_tokens: usize) -> bool {
        self.can_allocate_with_prefix(&[], num_tokens)
    }

    /// Gives `seq` a new table holding `num_tokens` slots; returns its blocks.
    pub fn allocate(&mut self, seq: SeqId, num_tokens: usize) -> Result<&[BlockId], BlockError> {
        self.allocate_with_prefix(seq, &[], num_tokens)
    }

    /// The longest run of `key`'s leading full blocks found in the cache, at most `max_blocks`:
    /// the blocks to pass to [`BlockManager::allocate_with_prefix`]. Each found block's stored
    /// tokens and parent are compared with `key`'s, so a hash collision is a miss.
    pub fn find_cached_prefix(&self, key: PrefixKey<'_>, max_blocks: usize) -> Vec<BlockId> {
        let bs = self.block_size;
        let mut found = Vec::new();
        let mut parent = key.root;
        for (i, hash) in key.hashes.iter().take(max_blocks).enumerate() {
            let Some(&b) = self.index.get(hash) else {
                break;
            };
            let Some(tokens) = key.tokens.get(i * bs..(i + 1) * bs) else {
                break;
            };
            let same = self.entries[b as usize].is_some_and(|e| e.parent == parent)
                && self.stored_tokens(b) == tokens;
            if !same {
                break;
            }
            found.push(b);
            parent = *hash;
        }
        found
    }

    /// Whether [`BlockManager::allocate_with_prefix`] of `prefix` and `num_new_tokens` would
    /// succeed now.
    pub fn can_allocate_with_prefix(&self, prefix: &[BlockId], num_new_tokens: usize) -> bool {
        self.check_prefix_allocation(prefix, num_new_tokens).is_ok()
    }

    /// Gives `seq` a new table: the cached blocks `prefix` (from
    /// [`BlockManager::find_cached_prefix`], shared, their KV already computed) followed by new
    /// blocks for `num_new_tokens` more slots. Returns the whole table.
    pub fn allocate_with_prefix(
        &mut self,
        seq: SeqId,
        prefix: &[BlockId],
        num_new_tokens: usize,
    ) -> Result<&[BlockId], BlockError> {
        if self.tables.contains_key(&seq) {
            return Err(BlockError::AlreadyAllocated(seq));
        }
        let needed = self.check_prefix_allocation(prefix, num_new_tokens)?;
        // Take the prefix first, so that evictions for the new blocks cannot reach it.
        for &b in prefix {
            self.hold(b);
        }
        let mut blocks = prefix.to_vec();
        for _ in 0..needed {
            blocks.push(self.take_block());
        }
        let table = self.tables.entry(seq).or_insert(BlockTable {
            blocks,
            num_tokens: prefix.len() * self.block_size + num_new_tokens,
            num_cache_checked: prefix.len(),
        });
        Ok(&table.blocks)
    }

    /// Blocks `seq` would need to grow by `num_new_tokens` slots (0 if it has no table).
    pub fn blocks_needed_to_append(&self, seq: SeqId, num_new_tokens: usize) -> usize {
        self.tables.get(&seq).map_or(0, |t| {
            self.blocks_for(t.num_tokens + num_new_tokens) - t.blocks.len()
        })
    }

    /// Whether `seq`'s table could grow by `num_new_tokens` slots now.
    pub fn can_append_slots(&self, seq: SeqId, num_new_tokens: usize) -> bool {
        self.tables.contains_key(&seq)
            && self.blocks_needed_to_append(seq, num_new_tokens) <= self.num_free_blocks()
    }

    /// Grows `seq`'s table by `num_new_tokens` slots; returns the blocks added (often none).
    pub fn append_slots(
        &mut self,
        seq: SeqId,
        num_new_tokens: usize,
    ) -> Result<&[BlockId], BlockError> {
        let available = self.num_free_blocks();
        // Split borrows: the table grows while blocks come off the free stack or the LRU.
        let Self {
            block_size,
            tables,
            free,
            evictable,
            refs,
            entries,
            index,
            ..
        } = self;
        let Some(table) = tables.get_mut(&seq) else {
            return Err(BlockError::NotAllocated(seq));
        };
        let needed = (table.num_tokens + num_new_tokens).div_ceil(*block_size) - table.blocks.len();
        if needed > available {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: available,
            });
        }
        let start = table.blocks.len();
        for _ in 0..needed {
            table
                .blocks
                .push(take_block_from(free, evictable, entries, index, refs));
        }
        table.num_tokens += num_new_tokens;
        Ok(&table.blocks[start..])
    }

    /// Enters `seq`'s full blocks whose KV is computed (its first `num_computed_tokens` tokens)
    /// into the cache, where no block with the same hash is cached yet (a duplicate stays
    /// private and is freed as usual). `key` is `seq`'s; blocks beyond `key.hashes` are left
    /// for a later call. Returns how many blocks were entered.
    pub fn cache_blocks(
        &mut self,
        seq: SeqId,
        key: PrefixKey<'_>,
        num_computed_tokens: usize,
    ) -> usize {
        let bs = self.block_size;
        let Some(table) = self.tables.get_mut(&seq) else {
            return 0;
        };
        let full = (num_computed_tokens.min(table.num_tokens) / bs)
            .min(key.hashes.len())
            .min(key.tokens.len() / bs);
        if full <= table.num_cache_checked {
            return 0;
        }
        let (from, blocks) = (table.num_cache_checked, table.blocks[..full].to_vec());
        table.num_cache_checked = full;
        if self.cached_tokens.is_empty() {
            self.cached_tokens = vec![0; self.num_blocks * bs];
        }
        let mut entered = 0;
        for (i, &b) in blocks.iter().enumerate().skip(from) {
            let hash = key.hashes[i];
            if self.entries[b as usize].is_some() || self.index.contains_key(&hash) {
                continue;
            }
            let parent = if i == 0 { key.root } else { key.hashes[i - 1] };
            self.index.insert(hash, b);
            self.entries[b as usize] = Some(CacheEntry {
                hash,
                parent,
                evictable_at: None,
            });
            let at = b as usize * bs;
            self.cached_tokens[at..at + bs].copy_from_slice(&key.tokens[i * bs..(i + 1) * bs]);
            entered += 1;
        }
        entered
    }

    /// Releases all of `seq`'s blocks: cached ones stay findable on the evictable list (tail
    /// first, so that a shared head outlives a private tail), others go back to the free stack.
    /// Returns how many blocks its table held (0 if it had none).
    pub fn free(&mut self, seq: SeqId) -> usize {
        let Some(table) = self.tables.remove(&seq) else {
            return 0;
        };
        let n = table.blocks.len();
        // Pushed in reverse, so that the next allocation gets them back in the same order.
        for &b in table.blocks.iter().rev() {
            self.release(b);
        }
        n
    }

    /// `seq`'s block table, if it has one.
    pub fn block_table(&self, seq: SeqId) -> Option<&[BlockId]> {
        self.tables.get(&seq).map(|t| t.blocks.as_slice())
    }

    /// Slots allocated to `seq` (0 if it has no table).
    pub fn num_slots(&self, seq: SeqId) -> usize {
        self.tables.get(&seq).map_or(0, |t| t.num_tokens)
    }

    /// The tokens a cached block holds, if it is cached.
    pub fn cached_block_tokens(&self, block: BlockId) -> Option<&[u32]> {
        self.entries
            .get(block as usize)?
            .as_ref()
            .map(|_| self.stored_tokens(block))
    }

    /// How many tables hold `block`.
    pub fn ref_count(&self, block: BlockId) -> u32 {
        self.refs.get(block as usize).copied().unwrap_or(0)
    }

    /// The blocks a table of `prefix` and `num_new_tokens` more slots needs beyond `prefix`,
    /// or why it cannot be had.
    fn check_prefix_allocation(
        &self,
        prefix: &[BlockId],
        num_new_tokens: usize,
    ) -> Result<usize, BlockError> {
        let mut sorted = prefix.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            return Err(BlockError::NotCached(w[0]));
        }
        if let Some(&b) = prefix
            .iter()
            .find(|&&b| self.entries.get(b as usize).is_none_or(Option::is_none))
        {
            return Err(BlockError::NotCached(b));
        }
        // Evictable blocks of the prefix are taken off the list, not allocated.
        let revived = prefix
            .iter()
            .filter(|&&b| self.refs[b as usize] == 0)
            .count();
        let needed =
            self.blocks_for(prefix.len() * self.block_size + num_new_tokens) - prefix.len();
        let free = self.num_free_blocks() - revived;
        if needed > free {
            return Err(BlockError::OutOfBlocks { needed, free });
        }
        Ok(needed)
    }

    /// A block for a table (see [`take_block_from`]).
    fn take_block(&mut self) -> BlockId {
        take_block_from(
            &mut self.free,
            &mut self.evictable,
            &mut self.entries,
            &mut self.index,
            &mut self.refs,
        )
    }

    /// One more table holds cached block `b`.
    fn hold(&mut self, b: BlockId) {
        let i = b as usize;
        if self.refs[i] == 0 {
            let tick = self.entries[i]
                .as_mut()
                .and_then(|e| e.evictable_at.take())
                .expect("an unheld cached block is evictable");
            self.evictable.remove(&tick);
        }
        self.refs[i] += 1;
    }

    /// One table fewer holds `b`; at none it is evictable (cached) or free.
    fn release(&mut self, b: BlockId) {
        let i = b as usize;
        self.refs[i] -= 1;
        if self.refs[i] > 0 {
            return;
        }
        match self.entries[i].as_mut() {
            Some(entry) => {
                let tick = self.next_tick;
                self.next_tick += 1;
                entry.evictable_at = Some(tick);
                self.evictable.insert(tick, b);
            }
            None => self.free.push(b),
        }
    }

    fn stored_tokens(&self, b: BlockId) -> &[u32] {
        let at = b as usize * self.block_size;
        &self.cached_tokens[at..at + self.block_size]
    }
}

/// A block for a table, held once: a free one, else the least recently released cached one,
/// evicted from the cache. The caller checked that one is there.
fn take_block_from(
    free: &mut Vec<BlockId>,
    evictable: &mut BTreeMap<u64, BlockId>,
    entries: &mut [Option<CacheEntry>],
    index: &mut HashMap<BlockHash, BlockId>,
    refs: &mut [u32],
) -> BlockId {
    let b = match free.pop() {
        Some(b) => b,
        None => {
            let (_, b) = evictable
                .pop_first()
                .expect("the caller checked for a free block");
            let entry = entries[b as usize].take().expect("evictable is cached");
            index.remove(&entry.hash);
            b
        }
    };
    refs[b as usize] = 1;
    b
}

#[path = "block_manager_invariants.rs"]
mod invariants;
pub use invariants::InvariantViolation;

#[cfg(test)]
#[path = "block_manager_tests.rs"]
mod tests;
