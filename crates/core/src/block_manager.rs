//! The paged KV cache's block manager: which fixed-size blocks of KV slots each sequence owns.
//!
//! The KV cache is `num_blocks` blocks of `block_size` token slots each. A sequence's keys and
//! values live in the blocks of its *block table*, in order: token `i` of the sequence is in slot
//! `i % block_size` of block `table[i / block_size]`. The executor reads and writes KV through
//! these tables; this structure only does the bookkeeping.
//!
//! # Invariants
//! After every public call:
//! 1. every block id in `0..num_blocks` is either on the free list or in exactly one block table,
//!    never both and never twice — so `free + used == total`;
//! 2. a table holding `n` tokens has exactly `ceil(n / block_size)` blocks;
//! 3. calls are all-or-nothing: one that returns an error changes nothing.
//!
//! Every verb costs O(blocks touched) plus one hash lookup: the free list is a stack, tables are
//! vectors, and nothing scans the pool. [`BlockManager::check_invariants`] verifies 1 and 2 in
//! O(num_blocks) for tests.

use rustc_hash::FxHashMap as HashMap;

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
}

/// A broken invariant (1 or 2 of the module docs), found by
/// [`BlockManager::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// A block id past the pool.
    #[error("block {0} out of range")]
    OutOfRange(BlockId),
    /// A block on the free list and in a table, or twice in either.
    #[error("block {block} owned twice ({first} and {second})")]
    OwnedTwice {
        /// The block.
        block: BlockId,
        /// Where it was found first: `free list` or `a table`.
        first: &'static str,
        /// Where it was found again.
        second: &'static str,
    },
    /// A table whose block count does not fit its token count.
    #[error("{seq:?} holds {tokens} tokens in {blocks} blocks")]
    TableSize {
        /// The sequence.
        seq: SeqId,
        /// Its tokens.
        tokens: usize,
        /// Its blocks.
        blocks: usize,
    },
    /// Free and used blocks do not add up to the pool.
    #[error("free {free} + used {used} != total {total}")]
    Miscount {
        /// Blocks on the free list.
        free: usize,
        /// Blocks in tables.
        used: usize,
        /// Blocks in the pool.
        total: usize,
    },
}

#[derive(Debug, Default)]
struct BlockTable {
    blocks: Vec<BlockId>,
    num_tokens: usize,
}

/// Owns the free list and every sequence's block table. See the module docs for the invariants.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    /// Free blocks; a stack, so the most recently freed block is reused first.
    free: Vec<BlockId>,
    tables: HashMap<SeqId, BlockTable>,
}

impl BlockManager {
    /// A pool of `num_blocks` blocks of `block_size` slots, all free.
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
    /// Blocks on the free list.
    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }
    /// Blocks owned by some sequence.
    pub fn num_used_blocks(&self) -> usize {
        self.num_blocks - self.free.len()
    }
    /// Blocks needed to hold `num_tokens` tokens.
    pub fn blocks_for(&self, num_tokens: usize) -> usize {
        num_tokens.div_ceil(self.block_size)
    }

    /// Whether a new table for `num_tokens` tokens would fit now.
    pub fn can_allocate(&self, num_tokens: usize) -> bool {
        self.blocks_for(num_tokens) <= self.free.len()
    }

    /// Gives `seq` a new table holding `num_tokens` slots; returns its blocks.
    pub fn allocate(&mut self, seq: SeqId, num_tokens: usize) -> Result<&[BlockId], BlockError> {
        if self.tables.contains_key(&seq) {
            return Err(BlockError::AlreadyAllocated(seq));
        }
        let needed = self.blocks_for(num_tokens);
        self.check_free(needed)?;
        let blocks = self.take_free(needed).collect();
        let table = self
            .tables
            .entry(seq)
            .or_insert(BlockTable { blocks, num_tokens });
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
            && self.blocks_needed_to_append(seq, num_new_tokens) <= self.free.len()
    }

    /// Grows `seq`'s table by `num_new_tokens` slots; returns the blocks added (often none).
    pub fn append_slots(
        &mut self,
        seq: SeqId,
        num_new_tokens: usize,
    ) -> Result<&[BlockId], BlockError> {
        let Some(table) = self.tables.get_mut(&seq) else {
            return Err(BlockError::NotAllocated(seq));
        };
        let needed =
            (table.num_tokens + num_new_tokens).div_ceil(self.block_size) - table.blocks.len();
        if needed > self.free.len() {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        let start = table.blocks.len();
        let at = self.free.len() - needed;
        table.blocks.extend(self.free.drain(at..).rev());
        table.num_tokens += num_new_tokens;
        Ok(&table.blocks[start..])
    }

    /// Returns all of `seq`'s blocks to the free list; returns how many (0 if it had none).
    pub fn free(&mut self, seq: SeqId) -> usize {
        let Some(table) = self.tables.remove(&seq) else {
            return 0;
        };
        let n = table.blocks.len();
        // Pushed in reverse, so that the next allocation gets them back in the same order.
        self.free.extend(table.blocks.into_iter().rev());
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

    /// Checks invariants 1 and 2 of the module docs; O(num_blocks).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut owner: Vec<Option<&'static str>> = vec![None; self.num_blocks];
        let mut claim = |b: BlockId, who: &'static str| -> Result<(), InvariantViolation> {
            let slot = owner
                .get_mut(b as usize)
                .ok_or(InvariantViolation::OutOfRange(b))?;
            if let Some(first) = *slot {
                return Err(InvariantViolation::OwnedTwice {
                    block: b,
                    first,
                    second: who,
                });
            }
            *slot = Some(who);
            Ok(())
        };
        for &b in &self.free {
            claim(b, "free list")?;
        }
        let mut used = 0;
        for (seq, table) in &self.tables {
            if table.blocks.len() != self.blocks_for(table.num_tokens) {
                return Err(InvariantViolation::TableSize {
                    seq: *seq,
                    tokens: table.num_tokens,
                    blocks: table.blocks.len(),
                });
            }
            used += table.blocks.len();
            for &b in &table.blocks {
                claim(b, "a table")?;
            }
        }
        if used + self.free.len() != self.num_blocks {
            return Err(InvariantViolation::Miscount {
                free: self.free.len(),
                used,
                total: self.num_blocks,
            });
        }
        Ok(())
    }

    /// Pops `n` blocks off the free stack, in pop order. The caller checked there are enough.
    fn take_free(&mut self, n: usize) -> impl Iterator<Item = BlockId> + '_ {
        let at = self.free.len() - n;
        self.free.drain(at..).rev()
    }

    fn check_free(&self, needed: usize) -> Result<(), BlockError> {
        if needed > self.free.len() {
            return Err(BlockError::OutOfBlocks {
                needed,
                free: self.free.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn seq(n: u64) -> SeqId {
        SeqId(n)
    }

    #[test]
    fn can_allocate_counts_whole_blocks() {
        let bm = BlockManager::new(4, 16);
        assert!(bm.can_allocate(0));
        assert!(bm.can_allocate(64));
        assert!(!bm.can_allocate(65));
        assert_eq!(bm.blocks_for(17), 2);
    }

    #[test]
    fn allocate_takes_blocks_and_is_all_or_nothing() {
        let mut bm = BlockManager::new(4, 16);
        assert_eq!(bm.allocate(seq(1), 17).expect("fits"), &[0, 1]);
        assert_eq!(bm.num_free_blocks(), 2);
        assert_eq!(bm.num_slots(seq(1)), 17);
        assert_eq!(
            bm.allocate(seq(1), 1),
            Err(BlockError::AlreadyAllocated(seq(1)))
        );
        assert_eq!(
            bm.allocate(seq(2), 33),
            Err(BlockError::OutOfBlocks { needed: 3, free: 2 })
        );
        assert_eq!(bm.num_free_blocks(), 2, "a failed allocate changes nothing");
        assert_eq!(bm.block_table(seq(2)), None);
        bm.check_invariants().expect("invariants");
    }

    #[test]
    fn append_slots_fills_the_last_block_before_taking_another() {
        let mut bm = BlockManager::new(3, 4);
        bm.allocate(seq(7), 3).expect("fits");
        assert!(bm.append_slots(seq(7), 1).expect("fits").is_empty());
        assert_eq!(bm.block_table(seq(7)), Some(&[0][..]));
        assert_eq!(bm.blocks_needed_to_append(seq(7), 5), 2);
        assert_eq!(bm.append_slots(seq(7), 5).expect("fits"), &[1, 2]);
        assert_eq!(bm.num_slots(seq(7)), 9);
        assert!(!bm.can_append_slots(seq(7), 4));
        assert_eq!(
            bm.append_slots(seq(7), 4),
            Err(BlockError::OutOfBlocks { needed: 1, free: 0 })
        );
        assert_eq!(bm.num_slots(seq(7)), 9, "a failed append changes nothing");
        assert_eq!(
            bm.append_slots(seq(8), 1),
            Err(BlockError::NotAllocated(seq(8)))
        );
        bm.check_invariants().expect("invariants");
    }

    #[test]
    fn free_returns_every_block_and_they_are_reused() {
        let mut bm = BlockManager::new(4, 2);
        bm.allocate(seq(1), 4).expect("fits");
        bm.allocate(seq(2), 2).expect("fits");
        assert_eq!(bm.free(seq(1)), 2);
        assert_eq!(bm.free(seq(1)), 0, "double free is a no-op");
        assert_eq!(bm.num_free_blocks(), 3);
        assert_eq!(bm.block_table(seq(1)), None);
        // The most recently freed blocks come back first.
        assert_eq!(bm.allocate(seq(3), 4).expect("fits"), &[0, 1]);
        bm.check_invariants().expect("invariants");
    }

    #[test]
    fn randomised_operations_keep_the_invariants() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let total = rng.random_range(1..64);
            let mut bm = BlockManager::new(total, rng.random_range(1..9));
            let mut live: Vec<SeqId> = Vec::new();
            for op in 0..2_000u64 {
                let free_before = bm.num_free_blocks();
                match rng.random_range(0..4) {
                    0 => {
                        let tokens = rng.random_range(0..80);
                        let fits = bm.can_allocate(tokens);
                        let id = seq(op);
                        assert_eq!(bm.allocate(id, tokens).is_ok(), fits);
                        if fits {
                            live.push(id);
                        } else {
                            assert_eq!(bm.num_free_blocks(), free_before);
                        }
                    }
                    1 | 2 if !live.is_empty() => {
                        let id = live[rng.random_range(0..live.len())];
                        let n = rng.random_range(0..20);
                        let fits = bm.can_append_slots(id, n);
                        let before = bm.num_slots(id);
                        assert_eq!(bm.append_slots(id, n).is_ok(), fits);
                        let expect = if fits { before + n } else { before };
                        assert_eq!(bm.num_slots(id), expect);
                    }
                    _ if !live.is_empty() => {
                        let id = live.swap_remove(rng.random_range(0..live.len()));
                        let held = bm.block_table(id).map_or(0, <[_]>::len);
                        assert_eq!(bm.free(id), held);
                        assert_eq!(bm.num_free_blocks(), free_before + held);
                    }
                    _ => {}
                }
                if let Err(e) = bm.check_invariants() {
                    panic!("seed {seed}, op {op}: {e}");
                }
            }
            for id in live {
                bm.free(id);
            }
            assert_eq!(bm.num_free_blocks(), total);
        }
    }
}
