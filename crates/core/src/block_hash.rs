//! Content hashes of full KV blocks, chained block by block: the prefix cache's keys.
//!
//! Block `i` of a sequence is identified by `hash(hash of block i-1, tokens of block i)`, with
//! a root in place of the parent of block 0, so that two sequences' blocks `i` have equal hashes
//! exactly when (but for a collision) their first `(i + 1) * block_size` tokens are equal — and
//! then their keys and values are equal too, since a causal model's KV at a position depends
//! only on the tokens up to it. Anything else that changes the KV (a LoRA adapter, a model
//! revision, a tenant's cache salt) goes into the root.
//!
//! The hash is std's SipHash-1-3 under keys drawn at random per [`BlockHasher`], so nobody can
//! craft prompts whose blocks collide with another's; the block manager also checks a found
//! block's tokens and parent before it is reused, so a collision could only ever cost a miss.

use std::hash::{BuildHasher, RandomState};

/// The chained content hash of one full block (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockHash(pub u64);

/// Computes [`BlockHash`]es under this process's random keys.
#[derive(Debug, Clone)]
pub struct BlockHasher {
    keys: RandomState,
}

impl Default for BlockHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl BlockHasher {
    /// A hasher with fresh random keys.
    pub fn new() -> Self {
        Self {
            keys: RandomState::new(),
        }
    }

    /// The parent of a sequence's first block: one root per distinct `salt` (`None` for the
    /// shared cache).
    pub fn root(&self, salt: Option<&str>) -> BlockHash {
        BlockHash(self.keys.hash_one(("root", salt)))
    }

    /// The hash of a block holding `tokens` after the block hashed `parent`.
    pub fn hash(&self, parent: BlockHash, tokens: &[u32]) -> BlockHash {
        BlockHash(self.keys.hash_one((parent.0, tokens)))
    }

    /// Appends to `hashes` (the chain from `root` of `tokens`' first `hashes.len()` blocks) the
    /// hashes of every further *full* block of `tokens`. Incremental: only new blocks are hashed.
    pub fn extend(
        &self,
        hashes: &mut Vec<BlockHash>,
        root: BlockHash,
        tokens: &[u32],
        block_size: usize,
    ) {
        let full = tokens.len() / block_size;
        while hashes.len() < full {
            let i = hashes.len();
            let parent = hashes.last().copied().unwrap_or(root);
            hashes.push(self.hash(parent, &tokens[i * block_size..(i + 1) * block_size]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_hash_equal_and_the_chain_carries_the_past() {
        let h = BlockHasher::new();
        let root = h.root(None);
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        h.extend(&mut a, root, &[1, 2, 3, 4, 5, 6, 7], 2);
        h.extend(&mut b, root, &[1, 2, 3, 4, 5, 6], 2);
        // Same block 1 and 2 tokens, different block 0.
        h.extend(&mut c, root, &[9, 2, 3, 4, 5, 6], 2);
        assert_eq!(a.len(), 3, "the partial block is not hashed");
        assert_eq!(a, b);
        assert!(a.iter().zip(&c).all(|(x, y)| x != y), "a change propagates");
        // Incremental extension gives the same chain as hashing at once.
        let mut d = Vec::new();
        h.extend(&mut d, root, &[1, 2, 3], 2);
        h.extend(&mut d, root, &[1, 2, 3, 4, 5, 6, 7], 2);
        assert_eq!(d, a);
        // Salts and other keys separate caches.
        let mut salted = Vec::new();
        h.extend(&mut salted, h.root(Some("tenant")), &[1, 2], 2);
        assert_ne!(salted[0], a[0]);
        let mut other = Vec::new();
        let h2 = BlockHasher::new();
        h2.extend(&mut other, h2.root(None), &[1, 2], 2);
        assert_ne!(other[0], a[0], "keys are drawn per hasher");
    }
}
