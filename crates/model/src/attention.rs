//! Paged attention on the CPU: every query token of a step against its own request's KV.
//!
//! A query at position `p` attends to positions `lo..=p` of its request (causal; `lo > 0` only
//! under a sliding window), read through the request's block table from the [`PagedKvStore`]
//! layout. Prefill chunks, decode tokens and recomputation after preemption are all the same
//! case. Work is split into one task per (query token, key/value head); each task handles the
//! query heads that share that key/value head (grouped-query attention), so each key and value
//! vector is loaded once per group.
//!
//! [`PagedKvStore`]: crate::kv_store::PagedKvStore

use wayfinder_core::Batch;

use crate::dispatch;
use crate::kv_store::{KvGeometry, LayerKv};
use crate::simd::{Isa, axpy, softmax};
use crate::team::Team;

/// The largest block size attention supports (one accumulator array per block).
pub const MAX_BLOCK: usize = 64;

/// Attention shape of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Attend only to the last `w` positions.
    pub sliding_window: Option<usize>,
}

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

thread_local! {
    /// Per-thread scratch for attention scores, reused across tasks and steps.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task: one query token, one key/value head.
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
    scores.resize(unit.group * n, 0.0);
    // Scores block by block: keys are stored transposed within a block ([head_dim, block]),
    // so the scores of a whole block are `block_size` lanes accumulated over `head_dim`
    // broadcast-multiply-adds — no horizontal sums.
    let mut acc = [0f32; MAX_BLOCK];
    for b in lo / bs..=unit.position / bs {
        let kt = &kv.k[geometry.block_offset(unit.table[b] as usize, unit.head)..][..hd * bs];
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
        let v = &kv.v[off..off + hd];
        for h in 0..unit.group {
            axpy(&mut out[h * hd..(h + 1) * hd], scores[h * n + j - lo], v);
        }
    }
}
