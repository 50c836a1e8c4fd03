//! Paged attention on the CPU: every query token of a step against its own request's KV.
//!
//! A query at position `p` attends to positions `lo..=p` of its request (causal; `lo > 0` only
//! under a sliding window), read through the request's block table from the [`PagedKvStore`]
//! layout. Prefill chunks, decode tokens and recomputation after preemption are all the same
//! case.
//!
//! With AVX-512 the work is split into tiles of up to 12 query rows of one request that share a
//! key/value head (the group's query heads, for several consecutive tokens of a prefill chunk),
//! each a register-blocked kernel (`attention_avx512.rs`): every key or value vector loaded
//! feeds all rows of the tile. Against one task per (token, key/value head) this made a
//! 512-token prefill of SmolLM2-135M 1.45× faster (attention was 40 % of its time).
//! Elsewhere a portable kernel runs one task per (query token, key/value head), handling the
//! heads that share that key/value head, so each key and value vector is loaded once per group.
//!
//! [`PagedKvStore`]: crate::kv_store::PagedKvStore

use wayfinder_core::Batch;

use half::slice::HalfFloatSliceExt;

use super::attention_params::AttentionParams;
use super::simd::dispatch;
use super::simd::{Isa, axpy, softmax};
use super::team::Team;
use crate::kv_store::{KvGeometry, LayerKv};

/// The largest block size attention supports (one accumulator array per block).
pub const MAX_BLOCK: usize = 64;

/// What every layer's attention of one step shares.
#[derive(Debug)]
pub struct StepContext<'a> {
    /// The step.
    pub batch: &'a Batch,
    /// `token_seq[t]`: index in `batch.seqs` of token `t`'s request.
    pub token_seq: Vec<usize>,
    /// The KV store's layout.
    pub geometry: KvGeometry,
    /// Kernels to run.
    pub isa: Isa,
    /// Threads to run them on.
    pub team: &'a Team,
    /// The AVX-512 kernel's tiles, made at the first layer: every layer of a model has the
    /// same head layout, so they hold for all.
    #[cfg(target_arch = "x86_64")]
    tiles: std::cell::OnceCell<Vec<Tile>>,
}

impl<'a> StepContext<'a> {
    /// The context of `batch` over a store laid out as `geometry`.
    pub fn new(batch: &'a Batch, geometry: KvGeometry, isa: Isa, team: &'a Team) -> Self {
        let mut token_seq = vec![0; batch.num_tokens()];
        for (i, s) in batch.seqs.iter().enumerate() {
            token_seq[s.tokens.clone()].fill(i);
        }
        Self {
            batch,
            token_seq,
            #[cfg(target_arch = "x86_64")]
            tiles: std::cell::OnceCell::new(),
            geometry,
            isa,
            team,
        }
    }
}

/// Computes attention for every token of the step.
///
/// `q` and `out` are `[tokens, num_heads · head_dim]`. Keys and values of this step's tokens
/// must already be in `kv`.
pub fn paged_attention(
    q: &[f32],
    out: &mut [f32],
    step: &StepContext<'_>,
    kv: &LayerKv,
    params: &AttentionParams,
) {
    let StepContext {
        batch,
        ref token_seq,
        ref geometry,
        isa,
        ..
    } = *step;
    let AttentionParams {
        num_heads,
        num_kv_heads,
        head_dim,
        ..
    } = *params;
    let group = num_heads / num_kv_heads;
    let width = num_heads * head_dim;
    debug_assert_eq!(q.len(), batch.num_tokens() * width);
    debug_assert_eq!(out.len(), q.len());
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx512 {
        let tiles = step.tiles.get_or_init(|| tiles(batch, group, num_kv_heads));
        let out = super::team::SendPtr(out.as_mut_ptr());
        step.team.tasks(tiles.len(), &|i| {
            let tile = &tiles[i];
            let seq = &batch.seqs[tile.seq];
            let out = &out;
            let mut rows = [super::attention_avx512::Row::EMPTY; super::attention_avx512::MAX_ROWS];
            let mut n = 0;
            for t in tile.tokens.clone() {
                for h in tile.heads.clone() {
                    let at = t * width + (tile.kv_head * group + h) * head_dim;
                    rows[n] = super::attention_avx512::Row {
                        q: q[at..at + head_dim].as_ptr(),
                        // SAFETY: `at + head_dim <= out.len()`, as for `q`; tiles cover
                        // disjoint (token, head) pairs, so no two tasks write the same floats.
                        out: unsafe { out.0.add(at) },
                        pos: batch.positions[t] as usize,
                    };
                    n += 1;
                }
            }
            SCORES.with_borrow_mut(|scratch| {
                // SAFETY: `Isa::detect` found AVX-512F/BW/VL; rows are in bounds and
                // disjoint (above); this step's keys and values are in `kv` (the caller's
                // contract).
                unsafe {
                    super::attention_avx512::attend_rows(
                        &rows[..n],
                        batch.block_table(seq),
                        tile.kv_head,
                        kv,
                        geometry,
                        params,
                        scratch,
                    );
                }
            });
        });
        return;
    }
    step.team.chunks(out, group * head_dim, &|task, o| {
        let (t, g) = (task / num_kv_heads, task % num_kv_heads);
        let seq = &batch.seqs[token_seq[t]];
        let unit = Unit {
            q: &q[t * width + g * group * head_dim..][..group * head_dim],
            table: batch.block_table(seq),
            position: batch.positions[t] as usize,
            head: g,
            group,
        };
        SCORES.with_borrow_mut(|scores| {
            dispatch!(isa, || attend(&unit, o, kv, geometry, params, scores));
        });
    });
}

/// One task of the tiled kernel: query heads `heads` (within the group) of key/value head
/// `kv_head`, for the consecutive tokens `tokens` of request `seq`.
#[cfg(target_arch = "x86_64")]
#[derive(Debug, Clone)]
struct Tile {
    seq: usize,
    tokens: std::ops::Range<usize>,
    kv_head: usize,
    heads: std::ops::Range<usize>,
}

/// The step's tiles: each at most `MAX_ROWS` query rows (tokens × heads), the tokens of later
/// positions first so that the longest tasks start early.
///
/// One decode token makes a tile per key/value head (3 for SmolLM2, on 2 threads). A tile per
/// query head instead (9, better balanced) was tried and measured slower at batch 1 on
/// longer contexts (Q8_0, 384 tokens decoded, 3 pairs: 171 / 146 / 157 against 174 / 160 /
/// 166 tok/s): each tile then widens its key/value head's f16 pages for one row instead of
/// three. Splitting the keys would balance without that (not done yet), at split points fixed
/// whatever the batch: the prefix cache's exactness needs a row's result not to depend on it.
#[cfg(target_arch = "x86_64")]
fn tiles(batch: &Batch, group: usize, num_kv_heads: usize) -> Vec<Tile> {
    use super::attention_avx512::MAX_ROWS;
    let head_parts = group.div_ceil(MAX_ROWS);
    let per_tile = (MAX_ROWS / group.div_ceil(head_parts)).max(1);
    let mut tiles = Vec::new();
    for (seq, s) in batch.seqs.iter().enumerate() {
        let mut end = s.tokens.end;
        while end > s.tokens.start {
            let start = end.saturating_sub(per_tile).max(s.tokens.start);
            for kv_head in 0..num_kv_heads {
                for part in 0..head_parts {
                    tiles.push(Tile {
                        seq,
                        tokens: start..end,
                        kv_head,
                        heads: group * part / head_parts..group * (part + 1) / head_parts,
                    });
                }
            }
            end = start;
        }
    }
    tiles
}

thread_local! {
    /// Per-thread scratch for attention scores, reused across tasks and steps.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task of the portable kernel: one query token, one key/value head.
struct Unit<'a> {
    /// The group's query heads, `[group, head_dim]`.
    q: &'a [f32],
    table: &'a [u32],
    position: usize,
    head: usize,
    group: usize,
}

#[inline(always)]
fn attend(
    unit: &Unit<'_>,
    out: &mut [f32],
    kv: &LayerKv,
    geometry: &KvGeometry,
    params: &AttentionParams,
    scores: &mut Vec<f32>,
) {
    let (hd, bs) = (params.head_dim, geometry.block_size);
    let lo = params
        .sliding_window
        .map_or(0, |w| (unit.position + 1).saturating_sub(w));
    let n = unit.position + 1 - lo;
    scores.clear();
    // The scores, then room for one block's keys (or one value vector) widened from the
    // store's f16: one per-thread buffer, no allocation per task.
    scores.resize(unit.group * n + hd * bs, 0.0);
    let (scores, wide) = scores.split_at_mut(unit.group * n);
    // Scores block by block: keys are stored transposed within a block ([head_dim, block]),
    // so the scores of a whole block are `block_size` lanes accumulated over `head_dim`
    // broadcast-multiply-adds — no horizontal sums.
    let mut acc = [0f32; MAX_BLOCK];
    for b in lo / bs..=unit.position / bs {
        let stored = &kv.k[geometry.block_offset(unit.table[b] as usize, unit.head)..][..hd * bs];
        stored.convert_to_f32_slice(wide);
        let kt = &*wide;
        let (first, last) = ((b * bs).max(lo), ((b + 1) * bs - 1).min(unit.position));
        for h in 0..unit.group {
            let q = &unit.q[h * hd..(h + 1) * hd];
            let acc = &mut acc[..bs];
            acc.fill(0.0);
            for (d, &qd) in q.iter().enumerate() {
                axpy(acc, qd, &kt[d * bs..(d + 1) * bs]);
            }
            for j in first..=last {
                scores[h * n + j - lo] = acc[j - b * bs] * params.scale;
            }
        }
    }
    for h in 0..unit.group {
        softmax(&mut scores[h * n..(h + 1) * n]);
    }
    out.fill(0.0);
    let slot = |j: usize| unit.table[j / bs] as usize * bs + j % bs;
    for j in lo..=unit.position {
        let off = geometry.offset(slot(j), unit.head);
        let v = &mut wide[..hd];
        kv.v[off..off + hd].convert_to_f32_slice(v);
        for h in 0..unit.group {
            axpy(&mut out[h * hd..(h + 1) * hd], scores[h * n + j - lo], v);
        }
    }
}

#[cfg(test)]
mod tests {
    use wayfinder_core::BatchSeq;

    use super::*;
    use crate::kv_store::HalfPages;

    /// A deterministic value in [-1, 1) for index `i` of stream `s`.
    fn value(s: u64, i: usize) -> f32 {
        let x = (i as u64 ^ (s << 32))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(17)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// Requests as (first new position, new tokens); each gets a shuffled block table.
    fn batch(requests: &[(usize, usize)], block_size: usize, num_blocks: usize) -> Batch {
        let mut b = Batch {
            block_size,
            ..Batch::default()
        };
        let mut next_block = 0;
        for (i, &(start, n)) in requests.iter().enumerate() {
            let context_len = start + n;
            let blocks = context_len.div_ceil(block_size);
            let table: Vec<u32> = (0..blocks)
                .map(|k| ((next_block + k) * 7 % num_blocks) as u32)
                .collect();
            next_block += blocks;
            let first = b.token_ids.len();
            for p in start..context_len {
                b.token_ids.push(1);
                b.positions.push(p as u32);
                b.slot_mapping
                    .push(table[p / block_size] * block_size as u32 + (p % block_size) as u32);
            }
            let t0 = b.block_tables.len();
            b.block_tables.extend(&table);
            b.seqs.push(BatchSeq {
                seq_id: wayfinder_core::SeqId(i as u64),
                tokens: first..b.token_ids.len(),
                context_len,
                block_table: t0..b.block_tables.len(),
                num_prompt_tokens: context_len,
                needs_logits: true,
                logits_rows: b.token_ids.len() - 1..b.token_ids.len(),
            });
        }
        assert!(next_block <= num_blocks, "test pool too small");
        b
    }

    /// Attention straight from the definition, in f64.
    fn reference(
        q: &[f32],
        b: &Batch,
        kv: &LayerKv,
        g: &KvGeometry,
        p: &AttentionParams,
    ) -> Vec<f32> {
        let (hd, group) = (p.head_dim, p.num_heads / p.num_kv_heads);
        let width = p.num_heads * hd;
        let mut out = vec![0f32; q.len()];
        for s in &b.seqs {
            let table = b.block_table(s);
            let slot =
                |j: usize| table[j / g.block_size] as usize * g.block_size + j % g.block_size;
            for t in s.tokens.clone() {
                let pos = b.positions[t] as usize;
                let lo = p.sliding_window.map_or(0, |w| (pos + 1).saturating_sub(w));
                for h in 0..p.num_heads {
                    let kvh = h / group;
                    let qv = &q[t * width + h * hd..][..hd];
                    let scores: Vec<f64> = (lo..=pos)
                        .map(|j| {
                            let (blk, off) = (slot(j) / g.block_size, slot(j) % g.block_size);
                            let base = g.block_offset(blk, kvh);
                            (0..hd)
                                .map(|d| {
                                    f64::from(qv[d])
                                        * f64::from(kv.k[base + d * g.block_size + off].to_f32())
                                })
                                .sum::<f64>()
                                * f64::from(p.scale)
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for d in 0..hd {
                        let v: f64 = (lo..=pos)
                            .zip(&e)
                            .map(|(j, w)| w * f64::from(kv.v[g.offset(slot(j), kvh) + d].to_f32()))
                            .sum();
                        out[t * width + h * hd + d] = (v / sum) as f32;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_the_definition_across_shapes() {
        let team = Team::new(2);
        // (block size, heads, kv heads, head dim, window)
        let shapes = [
            (16, 9, 3, 64, None),
            (16, 14, 2, 64, None),
            (1, 4, 4, 16, None),
            (5, 6, 2, 40, None),
            (20, 16, 1, 32, Some(9)),
            (64, 8, 8, 64, Some(70)),
        ];
        // A prefill chunk in the middle of a prompt, a decode token, a whole prompt; and steps
        // of one or two decode tokens alone.
        let steps: [&[(usize, usize)]; 3] = [
            &[(7, 30), (90, 1), (0, 19), (33, 12)],
            &[(90, 1)],
            &[(40, 1), (3, 1)],
        ];
        for ((bs, heads, kv_heads, hd, window), requests) in shapes
            .into_iter()
            .flat_map(|shape| steps.map(|requests| (shape, requests)))
        {
            let params = AttentionParams {
                num_heads: heads,
                num_kv_heads: kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                sliding_window: window,
            };
            let geometry = KvGeometry {
                num_blocks: 200,
                block_size: bs,
                num_kv_heads: kv_heads,
                head_dim: hd,
            };
            let b = batch(requests, bs, geometry.num_blocks);
            let n = geometry.values_per_layer();
            let values = |seed| -> Vec<half::f16> {
                (0..n)
                    .map(|i| half::f16::from_f32(value(seed, i)))
                    .collect()
            };
            let kv = LayerKv {
                k: HalfPages::from_slice(&values(1)),
                v: HalfPages::from_slice(&values(2)),
            };
            let q: Vec<f32> = (0..b.num_tokens() * heads * hd)
                .map(|i| 3.0 * value(3, i))
                .collect();
            let want = reference(&q, &b, &kv, &geometry, &params);
            for isa in [Isa::detect(), Isa::Baseline] {
                let step = StepContext::new(&b, geometry, isa, &team);
                let mut out = vec![f32::NAN; q.len()];
                paged_attention(&q, &mut out, &step, &kv, &params);
                for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (g - w).abs() < 1e-5,
                        "{isa:?} {requests:?} bs {bs} heads {heads}/{kv_heads} hd {hd}: [{i}] {g} vs {w}"
                    );
                }
            }
        }
    }
}
