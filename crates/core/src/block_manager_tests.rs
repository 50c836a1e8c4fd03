use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::block_hash::BlockHash;

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

/// A sequence's prefix key under `bm`'s hasher.
fn key_of(bm: &BlockManager, tokens: &[u32]) -> (BlockHash, Vec<BlockHash>) {
    let root = bm.hasher().root(None);
    let mut hashes = Vec::new();
    bm.hasher()
        .extend(&mut hashes, root, tokens, bm.block_size());
    (root, hashes)
}

fn key<'a>(root: BlockHash, hashes: &'a [BlockHash], tokens: &'a [u32]) -> PrefixKey<'a> {
    PrefixKey {
        root,
        hashes,
        tokens,
    }
}

#[test]
fn cached_blocks_are_shared_then_kept_then_evicted_last_used_last() {
    let mut bm = BlockManager::new(6, 2);
    let a = [1, 2, 3, 4, 5];
    let (root, ha) = key_of(&bm, &a);
    bm.allocate(seq(1), 5).expect("fits");
    assert_eq!(bm.cache_blocks(seq(1), key(root, &ha, &a), 5), 2);
    assert_eq!(bm.num_cached_blocks(), 2);
    // A second sequence with the same first four tokens finds both full blocks.
    let b = [1, 2, 3, 4, 9, 9];
    let (_, hb) = key_of(&bm, &b);
    let hit = bm.find_cached_prefix(key(root, &hb, &b), 3);
    assert_eq!(hit, &[0, 1]);
    assert_eq!(bm.find_cached_prefix(key(root, &hb, &b), 1), &[0], "capped");
    assert!(bm.can_allocate_with_prefix(&hit, 2));
    assert_eq!(
        bm.allocate_with_prefix(seq(2), &hit, 2).expect("fits"),
        &[0, 1, 3]
    );
    assert_eq!(
        (bm.ref_count(0), bm.ref_count(1), bm.ref_count(3)),
        (2, 2, 1)
    );
    bm.check_invariants().expect("invariants");
    // Freed, the cached blocks stay findable but count as free.
    bm.free(seq(1));
    bm.free(seq(2));
    assert_eq!(bm.num_free_blocks(), 6);
    assert_eq!(bm.num_cached_blocks(), 2);
    assert_eq!(bm.find_cached_prefix(key(root, &ha, &a), 2), &[0, 1]);
    bm.check_invariants().expect("invariants");
    // Uncached free blocks go first; then the tail block (1) is evicted before the head (0).
    bm.allocate(seq(3), 8).expect("fits");
    assert_eq!(bm.num_cached_blocks(), 2, "four uncached blocks were free");
    bm.allocate(seq(4), 2).expect("fits");
    assert_eq!(bm.block_table(seq(4)), Some(&[1][..]));
    assert_eq!(bm.find_cached_prefix(key(root, &ha, &a), 2), &[0]);
    bm.check_invariants().expect("invariants");
}

#[test]
fn a_pool_full_of_cached_blocks_still_admits_and_never_evicts_a_held_block() {
    let mut bm = BlockManager::new(4, 2);
    let a = [1, 2, 3, 4, 5, 6, 7, 8];
    let (root, ha) = key_of(&bm, &a);
    bm.allocate(seq(1), 8).expect("fits");
    assert_eq!(bm.cache_blocks(seq(1), key(root, &ha, &a), 8), 4);
    bm.free(seq(1));
    // Every block is cached and evictable; a new request still gets its blocks.
    assert_eq!(bm.num_free_blocks(), 4);
    assert!(bm.can_allocate(8));
    // One holding the first two cached blocks: the rest must come from evicting others only.
    let hit = bm.find_cached_prefix(key(root, &ha, &a), 2);
    assert_eq!(hit, &[0, 1]);
    bm.allocate_with_prefix(seq(2), &hit, 3).expect("fits");
    assert_eq!(bm.block_table(seq(2)), Some(&[0, 1, 3, 2][..]));
    assert!(!bm.can_allocate(1), "held blocks are not free");
    assert_eq!(
        bm.allocate(seq(3), 1),
        Err(BlockError::OutOfBlocks { needed: 1, free: 0 })
    );
    assert_eq!(
        bm.num_cached_blocks(),
        2,
        "only the evicted ones left the cache"
    );
    bm.check_invariants().expect("invariants");
    // Reviving evictable blocks counts against the free ones: no double counting.
    bm.free(seq(2));
    let hit = bm.find_cached_prefix(key(root, &ha, &a), 2);
    assert!(bm.can_allocate_with_prefix(&hit, 4));
    assert!(!bm.can_allocate_with_prefix(&hit, 5));
    assert_eq!(
        bm.allocate_with_prefix(seq(4), &hit, 5),
        Err(BlockError::OutOfBlocks { needed: 3, free: 2 })
    );
    assert_eq!(
        bm.block_table(seq(4)),
        None,
        "a failed allocate changes nothing"
    );
    assert_eq!(
        bm.allocate_with_prefix(seq(4), &[3], 0),
        Err(BlockError::NotCached(3))
    );
    assert_eq!(
        bm.allocate_with_prefix(seq(4), &[0, 0], 0),
        Err(BlockError::NotCached(0))
    );
    bm.check_invariants().expect("invariants");
}

#[test]
fn duplicates_stay_private_and_a_collision_is_only_a_miss() {
    let mut bm = BlockManager::new(4, 2);
    let a = [1, 2];
    let (root, ha) = key_of(&bm, &a);
    bm.allocate(seq(1), 2).expect("fits");
    bm.allocate(seq(2), 2).expect("fits");
    assert_eq!(bm.cache_blocks(seq(1), key(root, &ha, &a), 2), 1);
    assert_eq!(
        bm.cache_blocks(seq(2), key(root, &ha, &a), 2),
        0,
        "a duplicate"
    );
    bm.free(seq(2));
    assert_eq!(bm.num_cached_blocks(), 1);
    // A forged key: the right hash with other tokens, or another parent, finds nothing.
    assert!(bm.find_cached_prefix(key(root, &ha, &[1, 3]), 1).is_empty());
    let other_root = bm.hasher().root(Some("x"));
    assert!(
        bm.find_cached_prefix(key(other_root, &ha, &a), 1)
            .is_empty()
    );
    // Blocks not yet computed are not cached.
    let b = [5, 6, 7, 8];
    let (_, hb) = key_of(&bm, &b);
    bm.allocate(seq(3), 4).expect("fits");
    assert_eq!(bm.cache_blocks(seq(3), key(root, &hb, &b), 3), 1);
    assert_eq!(
        bm.cache_blocks(seq(3), key(root, &hb, &b), 4),
        1,
        "goes on where it was"
    );
    bm.check_invariants().expect("invariants");
}

/// The randomised test's model of a live sequence.
struct Live {
    id: SeqId,
    tokens: Vec<u32>,
}

#[test]
fn randomised_sharing_keeps_the_invariants_and_never_overwrites_a_held_block() {
    let mut hits = 0;
    for seed in 0..20 {
        let mut rng = StdRng::seed_from_u64(seed);
        let total = rng.random_range(1..48);
        let bs = rng.random_range(1..5);
        let mut bm = BlockManager::new(total, bs);
        // What each KV slot holds, as an executor would have written it.
        let mut kv: Vec<Option<u32>> = vec![None; total * bs];
        let mut live: Vec<Live> = Vec::new();
        for op in 0..2_000u64 {
            match rng.random_range(0..4) {
                0 => {
                    // Tokens from a tiny alphabet, so that prefixes repeat.
                    let len = rng.random_range(1..40);
                    let tokens: Vec<u32> = (0..len).map(|_| rng.random_range(0..2)).collect();
                    let (root, hashes) = key_of(&bm, &tokens);
                    let max = (len - 1) / bs;
                    let hit = bm.find_cached_prefix(key(root, &hashes, &tokens), max);
                    // The found blocks hold exactly this prefix.
                    for (i, &b) in hit.iter().enumerate() {
                        for j in 0..bs {
                            assert_eq!(kv[b as usize * bs + j], Some(tokens[i * bs + j]));
                        }
                    }
                    hits += hit.len();
                    let start = hit.len() * bs;
                    let fits = bm.can_allocate_with_prefix(&hit, len - start);
                    let id = seq(op);
                    assert_eq!(bm.allocate_with_prefix(id, &hit, len - start).is_ok(), fits);
                    if !fits {
                        continue;
                    }
                    let table = bm.block_table(id).expect("allocated").to_vec();
                    for (pos, &t) in tokens.iter().enumerate().skip(start) {
                        let b = table[pos / bs];
                        assert_eq!(bm.ref_count(b), 1, "a written block is private");
                        assert!(bm.cached_block_tokens(b).is_none(), "and not cached");
                        kv[b as usize * bs + pos % bs] = Some(t);
                    }
                    live.push(Live { id, tokens });
                }
                1 if !live.is_empty() => {
                    let k = rng.random_range(0..live.len());
                    let n = rng.random_range(1..8);
                    if !bm.can_append_slots(live[k].id, n) {
                        continue;
                    }
                    bm.append_slots(live[k].id, n).expect("checked");
                    let table = bm.block_table(live[k].id).expect("live").to_vec();
                    for _ in 0..n {
                        let (pos, t) = (live[k].tokens.len(), rng.random_range(0..2));
                        let b = table[pos / bs];
                        assert_eq!(bm.ref_count(b), 1, "a written block is private");
                        assert!(bm.cached_block_tokens(b).is_none(), "and not cached");
                        kv[b as usize * bs + pos % bs] = Some(t);
                        live[k].tokens.push(t);
                    }
                }
                2 if !live.is_empty() => {
                    let l = &live[rng.random_range(0..live.len())];
                    let (root, hashes) = key_of(&bm, &l.tokens);
                    bm.cache_blocks(l.id, key(root, &hashes, &l.tokens), l.tokens.len());
                }
                _ if !live.is_empty() => {
                    let l = live.swap_remove(rng.random_range(0..live.len()));
                    let free_before = bm.num_free_blocks();
                    let held = bm.block_table(l.id).map_or(0, <[_]>::len);
                    let shared = bm
                        .block_table(l.id)
                        .map_or(0, |t| t.iter().filter(|&&b| bm.ref_count(b) > 1).count());
                    assert_eq!(bm.free(l.id), held);
                    assert_eq!(bm.num_free_blocks(), free_before + held - shared);
                }
                _ => {}
            }
            if let Err(e) = bm.check_invariants() {
                panic!("seed {seed}, op {op}: {e}");
            }
            // Every live sequence still reads its own tokens through its table.
            for l in &live {
                let table = bm.block_table(l.id).expect("live");
                for (pos, &t) in l.tokens.iter().enumerate() {
                    let slot = table[pos / bs] as usize * bs + pos % bs;
                    assert_eq!(
                        kv[slot],
                        Some(t),
                        "seed {seed}, op {op}: {:?} pos {pos}",
                        l.id
                    );
                }
            }
        }
        for l in live {
            bm.free(l.id);
        }
        assert_eq!(bm.num_free_blocks(), total);
        bm.check_invariants().expect("invariants");
    }
    assert!(hits > 1_000, "the test shares blocks ({hits} hits)");
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
