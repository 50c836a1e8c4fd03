//! [`BlockManager::check_invariants`]: invariants 1–3 of the block manager's module docs,
//! checked in O(num_blocks) for tests.

use super::{BlockId, BlockManager};
use crate::sequence::SeqId;

/// A broken invariant (1–3 of the module docs), found by [`BlockManager::check_invariants`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantViolation {
    /// A block id past the pool.
    #[error("block {0} out of range")]
    OutOfRange(BlockId),
    /// A block in two places of free stack, evictable list and tables, or twice in one.
    #[error("block {block} owned twice ({first} and {second})")]
    OwnedTwice {
        /// The block.
        block: BlockId,
        /// Where it was found first: `free list`, `evictable list` or `a table`.
        first: &'static str,
        /// Where it was found again.
        second: &'static str,
    },
    /// A block's reference count differs from the tables holding it.
    #[error("block {block} has reference count {count} but {holders} holders")]
    RefCount {
        /// The block.
        block: BlockId,
        /// Its count.
        count: u32,
        /// Tables holding it.
        holders: u32,
    },
    /// The index and the blocks' cached state disagree, or the free stack holds a cached block
    /// or the evictable list an uncached one.
    #[error("block {0}'s cache entry is inconsistent")]
    CacheEntry(BlockId),
    /// A cached block whose hash is not that of its parent and tokens.
    #[error("block {0}'s hash does not match its tokens")]
    HashMismatch(BlockId),
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
    /// Free, evictable and held blocks do not add up to the pool.
    #[error("free {free} + used {used} != total {total}")]
    Miscount {
        /// Blocks on the free stack and the evictable list.
        free: usize,
        /// Blocks in tables.
        used: usize,
        /// Blocks in the pool.
        total: usize,
    },
}

/// Where the check found each block outside the tables.
type Places = Vec<Option<&'static str>>;

impl BlockManager {
    /// Checks invariants 1–3 of the module docs; O(num_blocks).
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let place = self.check_unheld()?;
        let holders = self.count_holders()?;
        let mut used = 0;
        for (b, &count) in holders.iter().enumerate() {
            used += usize::from(count > 0);
            self.check_block(b as BlockId, count, place[b])?;
        }
        if let Some((_, &b)) = self
            .index
            .iter()
            .find(|(h, b)| self.entries[**b as usize].map(|e| e.hash) != Some(**h))
        {
            return Err(InvariantViolation::CacheEntry(b));
        }
        let free = self.num_free_blocks();
        if used + free != self.num_blocks {
            return Err(InvariantViolation::Miscount {
                free,
                used,
                total: self.num_blocks,
            });
        }
        Ok(())
    }

    /// Places each block of the free stack (uncached) and the evictable list (cached, under its
    /// own tick), each once.
    fn check_unheld(&self) -> Result<Places, InvariantViolation> {
        let mut place: Places = vec![None; self.num_blocks];
        let mut claim = |b: BlockId, who: &'static str| -> Result<(), InvariantViolation> {
            let slot = place
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
            if self.entries[b as usize].is_some() {
                return Err(InvariantViolation::CacheEntry(b));
            }
        }
        for (&tick, &b) in &self.evictable {
            claim(b, "evictable list")?;
            if self.entries[b as usize].and_then(|e| e.evictable_at) != Some(tick) {
                return Err(InvariantViolation::CacheEntry(b));
            }
        }
        Ok(place)
    }

    /// How many tables hold each block, after checking each table's size and that it holds no
    /// block twice.
    fn count_holders(&self) -> Result<Vec<u32>, InvariantViolation> {
        let mut holders = vec![0u32; self.num_blocks];
        for (seq, table) in &self.tables {
            check_table(
                *seq,
                &table.blocks,
                table.num_tokens,
                self.blocks_for(table.num_tokens),
            )?;
            for &b in &table.blocks {
                *holders
                    .get_mut(b as usize)
                    .ok_or(InvariantViolation::OutOfRange(b))? += 1;
            }
        }
        Ok(holders)
    }

    /// Block `b`, held by `count` tables and found at `place` outside them: held blocks are
    /// nowhere else and not evictable, its count is right, and its cache entry (if any) is
    /// indexed under its hash, which is that of its parent and tokens.
    fn check_block(
        &self,
        b: BlockId,
        count: u32,
        place: Option<&'static str>,
    ) -> Result<(), InvariantViolation> {
        let entry = self.entries[b as usize];
        if count > 0 {
            if let Some(first) = place {
                return Err(InvariantViolation::OwnedTwice {
                    block: b,
                    first,
                    second: "a table",
                });
            }
            if entry.is_some_and(|e| e.evictable_at.is_some()) {
                return Err(InvariantViolation::CacheEntry(b));
            }
        }
        if self.refs[b as usize] != count {
            return Err(InvariantViolation::RefCount {
                block: b,
                count: self.refs[b as usize],
                holders: count,
            });
        }
        if let Some(e) = entry {
            if self.index.get(&e.hash) != Some(&b) {
                return Err(InvariantViolation::CacheEntry(b));
            }
            if self.hasher.hash(e.parent, self.stored_tokens(b)) != e.hash {
                return Err(InvariantViolation::HashMismatch(b));
            }
        }
        Ok(())
    }
}

/// A table of `tokens` tokens has `expected` blocks, none twice.
fn check_table(
    seq: SeqId,
    blocks: &[BlockId],
    tokens: usize,
    expected: usize,
) -> Result<(), InvariantViolation> {
    if blocks.len() != expected {
        return Err(InvariantViolation::TableSize {
            seq,
            tokens,
            blocks: blocks.len(),
        });
    }
    let mut sorted = blocks.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(InvariantViolation::OwnedTwice {
            block: w[0],
            first: "a table",
            second: "the same table",
        });
    }
    Ok(())
}
