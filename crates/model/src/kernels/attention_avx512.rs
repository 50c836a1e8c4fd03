//! The AVX-512 attention kernel: a tile of query rows against one key/value head's pages.
//!
//! A tile is up to [`MAX_ROWS`] query vectors of one request that share a key/value head (the
//! heads of a grouped-query group, for one or more consecutive tokens). Both products are the
//! same register-blocked panel: `acc[r] += Σ_i a[i][r] · b[i][0..16]`, one accumulator register
//! per query row, so that each 16-lane load of keys or values feeds every row of the tile and
//! each row's operand is a broadcast folded into the multiply-add.
//!
//! - scores: `a` is the tile's queries packed as `[head_dim][R]`, `b` a block's transposed keys
//!   (`[head_dim][block_size]`, 16 keys per panel);
//! - softmax per row over its own causal (and sliding-window) range, in row layout;
//! - output: `a` is the probabilities, read in row layout through a pointer per row
//!   ([`panels`]; transposing them to `[key][R]` first was ~13 % of a 2048-token
//!   prefill's attention, in scalar stores), `b` the values (`[key][head_dim]`, 16 dimensions
//!   per panel).
//!
//! Panels go `C` at a time ([`panels`]: four key panels, or four 16-dimension column chunks,
//! for tiles of up to 6 rows; two beyond): a decode tile of a grouped-query group has only 3
//! rows, and one panel's 3 multiply-add chains stall on their latency where 12 chains do not
//! (measured in `perf`: attention went from 16.5 % to 13.5 % of a 16-sequence Q4_K_M decode
//! step; what remains is mostly the masked loads of the keys and values from memory, which the
//! KV store keeps as f16 since 2026-12-02: half the bytes, widened in registers).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::f16;

use super::attention_params::AttentionParams;
use super::simd::softmax;
use crate::kv_store::{KvGeometry, LayerKv};

/// Query rows per tile: one accumulator register each, with room for the operands.
pub(crate) const MAX_ROWS: usize = 12;

/// One query vector of a tile.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    /// `head_dim` query values.
    pub q: *const f32,
    /// Where its `head_dim` outputs go.
    pub out: *mut f32,
    /// The query token's position.
    pub pos: usize,
}

impl Row {
    /// A placeholder for unused slots of a tile's fixed-size row array.
    pub(crate) const EMPTY: Row = Row {
        q: std::ptr::null(),
        out: std::ptr::null_mut(),
        pos: 0,
    };
}

/// Computes attention for `rows` (at most [`MAX_ROWS`]), all reading key/value head `head`
/// through the request's block `table`.
///
/// # Safety
/// The CPU must have AVX-512F/BW/VL. Each row's `q` must be valid for `head_dim` reads and its
/// `out` for `head_dim` writes that nobody else touches during the call; the keys and values of
/// positions up to every row's `pos` must be in `kv` under `table`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
pub(crate) unsafe fn attend_rows(
    rows: &[Row],
    table: &[u32],
    head: usize,
    kv: &LayerKv,
    geometry: &KvGeometry,
    params: &AttentionParams,
    scratch: &mut Vec<f32>,
) {
    macro_rules! by_rows {
        ($($n:literal)*) => {
            match rows.len() {
                $($n => {
                    let rows: &[Row; $n] = rows.try_into().expect("length matched");
                    // SAFETY: forwarded from the caller. Four panels at a time leave room for
                    // the accumulators of up to 6 rows, two for up to 12.
                    unsafe {
                        if $n <= 6 {
                            tile::<$n, 4>(rows, table, head, kv, geometry, params, scratch)
                        } else {
                            tile::<$n, 2>(rows, table, head, kv, geometry, params, scratch)
                        }
                    }
                })*
                n => panic!("an attention tile has 1 to {MAX_ROWS} rows, not {n}"),
            }
        };
    }
    by_rows!(1 2 3 4 5 6 7 8 9 10 11 12);
}

/// Lanes `0..n` of a 16-lane mask.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// A tile of `R` rows, `C` panels at a time.
#[inline(always)]
unsafe fn tile<const R: usize, const C: usize>(
    rows: &[Row; R],
    table: &[u32],
    head: usize,
    kv: &LayerKv,
    geometry: &KvGeometry,
    params: &AttentionParams,
    scratch: &mut Vec<f32>,
) {
    let (hd, bs) = (params.head_dim, geometry.block_size);
    let lo_of = |p: usize| {
        params
            .sliding_window
            .map_or(0, |w| (p + 1).saturating_sub(w))
    };
    let pmax = rows.iter().map(|r| r.pos).max().unwrap_or(0);
    let lo = rows.iter().map(|r| lo_of(r.pos)).min().unwrap_or(0);
    // Scores cover whole blocks from the first block any row reads: row `r`, key `j` at
    // `r * stride + j - base`.
    let (b0, b1) = (lo / bs, pmax / bs);
    let base = b0 * bs;
    let stride = ((b1 + 1) * bs - base).next_multiple_of(16);
    // Not cleared between tiles: every element read below is written first (queries, the
    // computed score panels, the zeros outside each row's range), and clearing cost a memset
    // of up to 2 · 12 · 512 floats per tile.
    let need = hd * R + R * stride;
    if scratch.len() < need {
        scratch.resize(need, 0.0);
    }
    let (qt, rest) = scratch[..need].split_at_mut(hd * R);
    let scores = &mut rest[..R * stride];

    // SAFETY (whole body): the caller vouches for the row pointers and the store's contents;
    // block offsets come from the store's geometry; every other access is inside `scratch`.
    unsafe {
        for (r, row) in rows.iter().enumerate() {
            for d in 0..hd {
                qt[d * R + r] = *row.q.add(d);
            }
        }
        let scale = _mm512_set1_ps(params.scale);
        let blocks = &table[b0..=b1];
        // Key panels (first key, keys, transposed keys), `C` at a time; a short group's
        // missing panels read nothing (mask 0) and are not stored.
        let mut group = [(0usize, 0usize, std::ptr::null::<f16>()); C];
        let mut filled = 0;
        // (No closure here: one would not inherit this function's target features, and the
        // intrinsics in it would become calls.)
        macro_rules! flush {
            () => {{
                let mut acc = [[_mm512_setzero_ps(); R]; C];
                let mut masks = [0 as __mmask16; C];
                let mut ptrs = [group[0].2; C];
                for j in 0..filled {
                    masks[j] = lanes(group[j].1);
                    ptrs[j] = group[j].2;
                }
                panels::<R, C, false>([qt.as_ptr(); R], ptrs, bs, hd, masks, &mut acc);
                for (&(first, n, _), acc) in group.iter().zip(&acc).take(filled) {
                    for (r, a) in acc.iter().enumerate() {
                        let dst = scores.as_mut_ptr().add(r * stride + first - base);
                        _mm512_mask_storeu_ps(dst, lanes(n), _mm512_mul_ps(*a, scale));
                    }
                }
            }};
        }
        for (b, &block) in (b0..).zip(blocks) {
            let kt =
                kv.k.as_ptr()
                    .add(geometry.block_offset(block as usize, head));
            for off in (0..bs).step_by(16) {
                let (first, n) = (b * bs + off, (bs - off).min(16));
                if first > pmax || first + n <= lo {
                    continue;
                }
                group[filled] = (first, n, kt.add(off));
                filled += 1;
                if filled == C {
                    flush!();
                    filled = 0;
                }
            }
        }
        if filled > 0 {
            flush!();
        }
        for (r, row) in rows.iter().enumerate() {
            let s = &mut scores[r * stride..(r + 1) * stride];
            let (from, to) = (lo_of(row.pos) - base, row.pos - base);
            s[..from].fill(0.0);
            s[to + 1..].fill(0.0);
            softmax(&mut s[from..=to]);
        }
        // Output columns in groups of `C` chunks of 16 dimensions; chunks past `head_dim` read
        // nothing (mask 0) and are not stored.
        for c0 in (0..hd).step_by(16 * C) {
            let mut masks = [0 as __mmask16; C];
            for (j, m) in masks.iter_mut().enumerate() {
                *m = lanes(hd.saturating_sub(c0 + 16 * j));
            }
            let mut acc = [[_mm512_setzero_ps(); R]; C];
            for (b, &block) in (b0..).zip(blocks) {
                let (j0, j1) = ((b * bs).max(lo), (b * bs + bs - 1).min(pmax));
                let v =
                    kv.v.as_ptr()
                        .add(geometry.block_offset(block as usize, head) + (j0 - b * bs) * hd + c0);
                let mut ptrs = [v; C];
                for (j, p) in ptrs.iter_mut().enumerate() {
                    if masks[j] != 0 {
                        *p = v.add(16 * j);
                    }
                }
                let probs: [*const f32; R] =
                    std::array::from_fn(|r| scores.as_ptr().add(r * stride + j0 - base));
                panels::<R, C, true>(probs, ptrs, hd, j1 + 1 - j0, masks, &mut acc);
            }
            for (j, acc) in acc.iter().enumerate() {
                if masks[j] == 0 {
                    continue;
                }
                for (row, a) in rows.iter().zip(acc) {
                    _mm512_mask_storeu_ps(row.out.add(c0 + 16 * j), masks[j], *a);
                }
            }
        }
    }
}

/// `acc[j][r] += Σ_{i < k} a(r, i) · b[j][i · ldb .. + 16]` for `C` panels `b[j]` of the
/// store's f16 (lanes outside `masks[j]` read as 0; a panel whose mask is 0 reads nothing),
/// where `a(r, i)` is `a[r][i]` (`BY_ROW`: the probabilities, a row each) or `a[0][i · R + r]`
/// (the queries packed `[head_dim][R]`, one pointer and constant offsets).
#[inline(always)]
unsafe fn panels<const R: usize, const C: usize, const BY_ROW: bool>(
    a: [*const f32; R],
    b: [*const f16; C],
    ldb: usize,
    k: usize,
    masks: [__mmask16; C],
    acc: &mut [[__m512; R]; C],
) {
    // SAFETY: the caller keeps every `a(r, i)` for `i < k` and each `b[j]`'s `k` rows of
    // `ldb` (masked lanes) in bounds.
    unsafe {
        for i in 0..k {
            let mut bv = [_mm512_setzero_ps(); C];
            for j in 0..C {
                let half = _mm256_maskz_loadu_epi16(masks[j], b[j].wrapping_add(i * ldb).cast());
                bv[j] = _mm512_cvtph_ps(half);
            }
            for r in 0..R {
                let v = if BY_ROW {
                    *a[r].add(i)
                } else {
                    *a[0].add(i * R + r)
                };
                let x = _mm512_set1_ps(v);
                for (acc, bv) in acc.iter_mut().zip(&bv) {
                    acc[r] = _mm512_fmadd_ps(x, *bv, acc[r]);
                }
            }
        }
    }
}
