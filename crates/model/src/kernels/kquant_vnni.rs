//! Integer dot products on Q4_K blocks with AVX-512 VNNI: the [`Pairs`] of `quant_vnni.rs` for
//! a format whose 256-value blocks hold eight 32-value sub-blocks, each with its own 6-bit
//! scale and minimum (ggml's `get_scale_min_k4`). A group of 64 values — 32 bytes whose low
//! nibbles are one sub-block and high nibbles the next — is one pair: the same `vpdpbusd` per
//! 64 weights as the 32-value formats, with `dw = d · scale` and `mw = −dmin · min` per
//! sub-block.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::quant_type::QuantType;
use super::quant_vnni::{PREFETCH_BYTES, Pairs, Q8Rows, row_dot_with};

/// Whether `ty` has a kernel here.
pub(crate) fn supports(ty: QuantType) -> bool {
    ty == QuantType::Q4K
}

/// `out[i] = Σ_k x[i, k] · w[k]` for one Q4_K weight row `w` and every row of `x`.
///
/// # Safety
/// As `quant_vnni::row_dot`: the CPU must pass `quant_vnni::available`, `w` must hold
/// `x.blocks() / 8` Q4_K blocks, `out` one value per row of `x`.
pub(crate) unsafe fn row_dot(ty: QuantType, w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    debug_assert!(supports(ty));
    // SAFETY: forwarded from the caller.
    unsafe { row_dot_with::<Q4K>(w, x, out) }
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of scales and minimums, 128 bytes of nibbles.
struct Q4K;

const BYTES: usize = 144;

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j`.
#[inline(always)]
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}

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
            let scales = &*block.add(4).cast::<[u8; 12]>();
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
