//! Integer dot products on the k-quants Q4_K and Q6_K with AVX-512 VNNI: the [`Pairs`] of
//! `quant_vnni.rs` for 256-value blocks.
//!
//! - Q4_K: eight 32-value sub-blocks, each with its own 6-bit scale and minimum (ggml's
//!   `get_scale_min_k4`). A group of 64 values — 32 bytes whose low nibbles are one sub-block
//!   and high nibbles the next — is one pair, with `dw = d · scale` and `mw = −dmin · min`.
//! - Q6_K: 6-bit values `u` (low nibble + 2 high bits), `value = d · scale · (u − 32)` with a
//!   signed 8-bit scale per 16 values: lanes 0–3 and 4–7 of a 32-value block have different
//!   `dw`, and `mw = −32 · dw` (the per-lane offset sums of `Q8Rows` make that exact).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::kquant_avx512::scale_min_k4;
use super::quant_type::QuantType;
use super::quant_vnni::{PREFETCH_BYTES, Pairs, Q8Rows, row_dot_with, rows_dot_with};

/// Whether `ty` has a kernel here.
pub(crate) fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4K | QuantType::Q6K)
}

/// `out[i] = Σ_k x[i, k] · w[k]` for one Q4_K or Q6_K weight row `w` and every row of `x`.
///
/// # Safety
/// As `quant_vnni::row_dot`: the CPU must pass `quant_vnni::available`, `w` must hold
/// `x.blocks() / 8` Q4_K blocks, `out` one value per row of `x`.
pub(crate) unsafe fn row_dot(ty: QuantType, w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4K => row_dot_with::<Q4K>(w, x, out),
            QuantType::Q6K => row_dot_with::<Q6K>(w, x, out),
            _ => unreachable!("supports() admits only Q4_K and Q6_K"),
        }
    }
}

/// `out[r * n + j]` for the Q4_K or Q6_K weight rows `w`: `quant_vnni::rows_dot_with`.
///
/// # Safety
/// As [`row_dot`], for every row of `w`; `x` has at most `quant_vnni::group_width(R)` rows.
pub(crate) unsafe fn rows_dot<const R: usize>(
    ty: QuantType,
    w: [&[u8]; R],
    x: &Q8Rows,
    out: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4K => rows_dot_with::<Q4K, R>(w, x, out),
            QuantType::Q6K => rows_dot_with::<Q6K, R>(w, x, out),
            _ => unreachable!("supports() admits only Q4_K and Q6_K"),
        }
    }
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of scales and minimums, 128 bytes of nibbles.
struct Q4K;

const BYTES: usize = 144;

impl Pairs for Q4K {
    fn row_bytes(blocks: usize) -> usize {
        blocks / 8 * BYTES
    }

    #[inline(always)]
    unsafe fn pair(w: *const u8, p: usize) -> (__m512i, __m512, __m512) {
        let (k, g) = (p / 4, p % 4);
        // SAFETY: block `k` lies in the row (the caller's promise); the CPU has AVX-512
        // F/BW/DQ and F16C.
        unsafe {
            let block = w.add(k * BYTES);
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_BYTES).cast());
            let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(block.cast::<i32>().read_unaligned()));
            let (d, dmin) = (
                _mm_cvtss_f32(dd),
                _mm_cvtss_f32(_mm_shuffle_ps::<1>(dd, dd)),
            );
            let scales = std::slice::from_raw_parts(block.add(4), 12);
            let (s1, m1) = scale_min_k4(2 * g, scales);
            let (s2, m2) = scale_min_k4(2 * g + 1, scales);
            let lanes =
                |a: f32, b: f32| _mm512_insertf32x8::<1>(_mm512_set1_ps(a), _mm256_set1_ps(b));
            let q = _mm256_loadu_si256(block.add(16 + 32 * g).cast());
            let mask = _mm256_set1_epi8(0x0F);
            let lo = _mm256_and_si256(q, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            (
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi),
                lanes(d * s1, d * s2),
                lanes(-dmin * m1, -dmin * m2),
            )
        }
    }

    unsafe fn last_block(_w: *const u8, _b: usize, _x: &Q8Rows, _row: usize) -> f32 {
        // Q4_K rows are whole 256-value blocks: eight 32-value blocks, never an odd one.
        0.0
    }
}

/// Q6_K: per half of 128 values, 64 bytes of low nibbles, 32 of 2-bit high parts, 8 scales;
/// `d` (f16) last.
struct Q6K;

const Q6K_BYTES: usize = 210;

impl Pairs for Q6K {
    fn row_bytes(blocks: usize) -> usize {
        blocks / 8 * Q6K_BYTES
    }

    #[inline(always)]
    unsafe fn pair(w: *const u8, p: usize) -> (__m512i, __m512, __m512) {
        // Pair `j` of a block: half `j / 2`, quarters 0 and 1 (even `j`) or 2 and 3 (odd).
        let (k, j) = (p / 4, p % 4);
        let (half, upper) = (j / 2, j % 2 == 1);
        // SAFETY: block `k` lies in the row (the caller's promise); the CPU has AVX-512
        // F/BW/DQ and F16C.
        unsafe {
            let block = w.add(k * Q6K_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(block.wrapping_add(PREFETCH_BYTES).cast());
            let ql = block.add(64 * half);
            let qh = _mm256_loadu_si256(block.add(128 + 32 * half).cast());
            let (l0, l1) = (
                _mm256_loadu_si256(ql.cast()),
                _mm256_loadu_si256(ql.add(32).cast()),
            );
            let (m4, m2) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x03));
            let high = |h: __m256i| _mm256_slli_epi16::<4>(_mm256_and_si256(h, m2));
            let (a, b) = if upper {
                (
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                        high(_mm256_srli_epi16::<4>(qh)),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                        high(_mm256_srli_epi16::<6>(qh)),
                    ),
                )
            } else {
                (
                    _mm256_or_si256(_mm256_and_si256(l0, m4), high(qh)),
                    _mm256_or_si256(_mm256_and_si256(l1, m4), high(_mm256_srli_epi16::<2>(qh))),
                )
            };
            let u = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(a), b);
            let d = half::f16::from_le_bytes([*block.add(208), *block.add(209)]).to_f32();
            // Quarter `q` uses scales `2q` (values 0-15) and `2q + 1` (16-31) of the half.
            let sc = block.add(192 + 8 * half + if upper { 4 } else { 0 });
            let s = |i: usize| d * f32::from(*sc.add(i) as i8);
            let four = _mm_set_ps(s(3), s(2), s(1), s(0));
            let idx = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
            let dw = _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(four));
            (u, dw, _mm512_mul_ps(dw, _mm512_set1_ps(-32.0)))
        }
    }

    unsafe fn last_block(_w: *const u8, _b: usize, _x: &Q8Rows, _row: usize) -> f32 {
        // Q6_K rows are whole 256-value blocks: never an odd 32-value block.
        0.0
    }
}
