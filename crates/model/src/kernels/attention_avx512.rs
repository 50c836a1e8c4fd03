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
//! - output: `a` is the probabilities transposed to `[key][R]`, `b` the values (`[key][head_dim]`,
//!   16 dimensions per panel).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

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
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
                    // SAFETY: forwarded from the caller.
                    unsafe { tile::<$n>(rows, table, head, kv, geometry, params, scratch) }
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

#[inline(always)]
unsafe fn tile<const R: usize>(
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
    scratch.clear();
    scratch.resize(hd * R + 2 * R * stride, 0.0);
    let (qt, rest) = scratch.split_at_mut(hd * R);
    let (scores, pt) = rest.split_at_mut(R * stride);

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
        for (b, &block) in (b0..).zip(blocks) {
            let kt =
                kv.k.as_ptr()
                    .add(geometry.block_offset(block as usize, head));
            for off in (0..bs).step_by(16) {
                let (first, n) = (b * bs + off, (bs - off).min(16));
                if first > pmax || first + n <= lo {
                    continue;
                }
                let mut acc = [_mm512_setzero_ps(); R];
                panel::<R>(qt.as_ptr(), kt.add(off), bs, hd, lanes(n), &mut acc);
                for (r, a) in acc.iter().enumerate() {
                    let dst = scores.as_mut_ptr().add(r * stride + first - base);
                    _mm512_mask_storeu_ps(dst, lanes(n), _mm512_mul_ps(*a, scale));
                }
            }
        }
        for (r, row) in rows.iter().enumerate() {
            let s = &mut scores[r * stride..(r + 1) * stride];
            let (from, to) = (lo_of(row.pos) - base, row.pos - base);
            s[..from].fill(0.0);
            s[to + 1..].fill(0.0);
            softmax(&mut s[from..=to]);
            for (j, &p) in s.iter().enumerate() {
                pt[j * R + r] = p;
            }
        }
        for c in (0..hd).step_by(16) {
            let mask = lanes(hd - c);
            let mut acc = [_mm512_setzero_ps(); R];
            for (b, &block) in (b0..).zip(blocks) {
                let (j0, j1) = ((b * bs).max(lo), (b * bs + bs - 1).min(pmax));
                let v =
                    kv.v.as_ptr()
                        .add(geometry.block_offset(block as usize, head) + (j0 - b * bs) * hd + c);
                panel::<R>(
                    pt.as_ptr().add((j0 - base) * R),
                    v,
                    hd,
                    j1 + 1 - j0,
                    mask,
                    &mut acc,
                );
            }
            for (row, a) in rows.iter().zip(&acc) {
                _mm512_mask_storeu_ps(row.out.add(c), mask, *a);
            }
        }
    }
}

/// `acc[r] += Σ_{i < k} a[i · R + r] · b[i · ldb .. + 16]` (lanes outside `mask` read as 0).
#[inline(always)]
unsafe fn panel<const R: usize>(
    a: *const f32,
    b: *const f32,
    ldb: usize,
    k: usize,
    mask: __mmask16,
    acc: &mut [__m512; R],
) {
    // SAFETY: the caller keeps `a[..k · R]` and `b`'s `k` rows of `ldb` (masked lanes) in bounds.
    unsafe {
        for i in 0..k {
            let bv = _mm512_maskz_loadu_ps(mask, b.add(i * ldb));
            let ar = a.add(i * R);
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*ar.add(r)), bv, *acc);
            }
        }
    }
}
