//! AVX-512 dequantization of the 256-value k-quant blocks Q4_K and Q6_K (ggml-quants.c's
//! `dequantize_row_q4_K` / `_q6_K`, 16 values a vector), for the f32 paths of
//! [`super::quant`]: a weight row before its dot products, a tile before gemm. candle's decoders
//! for these types are scalar; these are checked against the same hand-written reference.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::quant_type::QuantType;

/// Values per block.
const QK_K: usize = 256;

/// Whether this CPU has what these kernels use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("f16c")
}

/// Whether `ty` has a kernel here.
pub(crate) fn supports(ty: QuantType) -> bool {
    matches!(ty, QuantType::Q4K | QuantType::Q6K)
}

/// Dequantizes the blocks of `ty` in `bytes` into `out` (256 values a block).
///
/// # Safety
/// The CPU must pass [`available`]; [`supports`] must accept `ty`; `bytes` must hold
/// `out.len() / 256` whole blocks.
pub(crate) unsafe fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4K => q4_k(bytes, out),
            QuantType::Q6K => q6_k(bytes, out),
            _ => unreachable!("supports() admits only Q4_K and Q6_K"),
        }
    }
}

/// 16 bytes widened to f32 lanes.
#[inline(always)]
unsafe fn widen(v: __m128i) -> __m512 {
    // SAFETY: AVX-512F is available to the caller.
    unsafe { _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v)) }
}

/// ggml's `get_scale_min_k4`: the 6-bit scale and minimum of sub-block `j` of a Q4_K (or
/// Q5_K) block's 12 scale bytes `q`.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
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

/// The f16 at `b[i..i + 2]`.
fn half_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Q4_K: `d`, `dmin` (f16), 12 bytes of 6-bit scales and minimums, 128 bytes of nibbles; each
/// 64 values take the low nibbles of 32 bytes (first 32) and their high nibbles (next 32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q4_k(bytes: &[u8], out: &mut [f32]) {
    const BYTES: usize = 144;
    assert!(
        bytes.len() >= out.len() / QK_K * BYTES,
        "blocks and values disagree"
    );
    let mask = _mm_set1_epi8(0x0F);
    for (block, o) in bytes.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (half_at(block, 0), half_at(block, 2));
        let (scales, qs) = (&block[4..16], &block[16..144]);
        for (g, (q, y)) in qs.chunks_exact(32).zip(o.chunks_exact_mut(64)).enumerate() {
            let (s1, m1) = scale_min_k4(2 * g, scales);
            let (s2, m2) = scale_min_k4(2 * g + 1, scales);
            let (a1, b1) = (_mm512_set1_ps(d * s1), _mm512_set1_ps(-dmin * m1));
            let (a2, b2) = (_mm512_set1_ps(d * s2), _mm512_set1_ps(-dmin * m2));
            for half in 0..2 {
                // SAFETY: `q` holds 32 bytes, `y` 64 values; the features are this function's.
                unsafe {
                    let v = _mm_loadu_si128(q.as_ptr().add(16 * half).cast());
                    let lo = widen(_mm_and_si128(v, mask));
                    let hi = widen(_mm_and_si128(_mm_srli_epi16::<4>(v), mask));
                    let p = y.as_mut_ptr().add(16 * half);
                    _mm512_storeu_ps(p, _mm512_fmadd_ps(lo, a1, b1));
                    _mm512_storeu_ps(p.add(32), _mm512_fmadd_ps(hi, a2, b2));
                }
            }
        }
    }
}

/// Q6_K: 128 bytes of low nibbles, 64 bytes of 2-bit high parts, 16 signed 8-bit scales, `d`;
/// values are `d · scale · (q − 32)`, 16 values sharing a scale.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q6_k(bytes: &[u8], out: &mut [f32]) {
    const BYTES: usize = 210;
    assert!(
        bytes.len() >= out.len() / QK_K * BYTES,
        "blocks and values disagree"
    );
    let (mask4, mask2) = (_mm_set1_epi8(0x0F), _mm_set1_epi8(0x03));
    for (block, o) in bytes.chunks_exact(BYTES).zip(out.chunks_exact_mut(QK_K)) {
        let d = half_at(block, 208);
        let minus32 = _mm512_set1_ps(-32.0);
        for half in 0..2 {
            let ql = &block[64 * half..64 * half + 64];
            let qh = &block[128 + 32 * half..128 + 32 * half + 32];
            let sc = &block[192 + 8 * half..192 + 8 * half + 8];
            let y = &mut o[128 * half..128 * half + 128];
            // 16 values at a time: `l` in 0..32 by 16; the four quarters of 32 values.
            for l in [0usize, 16] {
                // SAFETY: the slices hold what is read and written; the features are this
                // function's.
                unsafe {
                    let a = _mm_loadu_si128(ql.as_ptr().add(l).cast());
                    let b = _mm_loadu_si128(ql.as_ptr().add(l + 32).cast());
                    let h = _mm_loadu_si128(qh.as_ptr().add(l).cast());
                    let high = |shift: i32| match shift {
                        0 => _mm_slli_epi16::<4>(_mm_and_si128(h, mask2)),
                        2 => _mm_slli_epi16::<4>(_mm_and_si128(_mm_srli_epi16::<2>(h), mask2)),
                        4 => _mm_slli_epi16::<4>(_mm_and_si128(_mm_srli_epi16::<4>(h), mask2)),
                        _ => _mm_slli_epi16::<4>(_mm_and_si128(_mm_srli_epi16::<6>(h), mask2)),
                    };
                    let quarters = [
                        _mm_or_si128(_mm_and_si128(a, mask4), high(0)),
                        _mm_or_si128(_mm_and_si128(b, mask4), high(2)),
                        _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(a), mask4), high(4)),
                        _mm_or_si128(_mm_and_si128(_mm_srli_epi16::<4>(b), mask4), high(6)),
                    ];
                    let is = l / 16;
                    for (k, q) in quarters.into_iter().enumerate() {
                        let scale = d * f32::from(sc[is + 2 * k] as i8);
                        let v = _mm512_add_ps(widen(q), minus32);
                        let p = y.as_mut_ptr().add(l + 32 * k);
                        _mm512_storeu_ps(p, _mm512_mul_ps(v, _mm512_set1_ps(scale)));
                    }
                }
            }
        }
    }
}
