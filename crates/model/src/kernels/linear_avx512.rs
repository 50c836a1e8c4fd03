//! The AVX-512 register-tiled kernel for `y = x · Wᵀ` with few rows of `x` (decode steps).
//!
//! A tile is up to 4 weight rows × 4 input rows: 16 accumulators of 16 lanes stay in registers
//! while `k` advances 16 at a time, so each weight vector loaded from memory feeds 4 FMAs and each
//! input vector (from L1) feeds 4. Weights are widened from bf16/f16 in registers. The `k` tail
//! uses masked loads. Compared with one dot product per output, this cuts loads per FMA by 4×
//! and removes a horizontal reduction per output per 16 lanes.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::{bf16, f16};

/// A weight element type the kernel can widen in registers.
pub(crate) trait WideLoad: Copy {
    /// How far ahead of the current position weight rows are prefetched, in bytes (measured on
    /// SmolLM2's output head: f32 best at 2 KiB, half precision at 8 KiB).
    const PREFETCH_BYTES: usize;
    /// 16 values from `p`, as f32 lanes.
    ///
    /// # Safety
    /// `p` must be valid for 16 reads; the CPU must have AVX-512F/BW.
    unsafe fn load(p: *const Self) -> __m512;
    /// The first `n < 16` values from `p`, other lanes 0.
    ///
    /// # Safety
    /// `p` must be valid for `n` reads; the CPU must have AVX-512F/BW/VL.
    unsafe fn load_partial(p: *const Self, n: usize) -> __m512;
}

impl WideLoad for f32 {
    const PREFETCH_BYTES: usize = 2048;
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        // SAFETY: the caller guarantees 16 readable floats.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const Self, n: usize) -> __m512 {
        // SAFETY: masked lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p) }
    }
}

impl WideLoad for bf16 {
    const PREFETCH_BYTES: usize = 8192;
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        // SAFETY: 16 readable bf16 values; bf16 → f32 is a 16-bit left shift.
        unsafe {
            let h = _mm256_loadu_si256(p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const Self, n: usize) -> __m512 {
        // SAFETY: masked lanes are not read.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(((1u32 << n) - 1) as u16, p.cast());
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
        }
    }
}

impl WideLoad for f16 {
    const PREFETCH_BYTES: usize = 8192;
    #[inline(always)]
    unsafe fn load(p: *const Self) -> __m512 {
        // SAFETY: 16 readable halves.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const Self, n: usize) -> __m512 {
        // SAFETY: masked lanes are not read.
        unsafe { _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(((1u32 << n) - 1) as u16, p.cast())) }
    }
}

/// `out[r · m + i] = Σ_k x[i, k] · w[r, k]` for the weight rows in `w` (whole rows of `k`) and
/// all `m` input rows of `x`.
///
/// # Safety
/// The CPU must have AVX-512F, BW and VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,f16c,fma")]
pub(crate) unsafe fn rows_times_inputs<E: WideLoad>(
    w: &[E],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
) {
    let rows = w.len() / k;
    debug_assert_eq!(out.len(), rows * m);
    debug_assert_eq!(x.len(), m * k);
    for r0 in (0..rows).step_by(4) {
        let nr = (rows - r0).min(4);
        for i0 in (0..m).step_by(4) {
            let ni = (m - i0).min(4);
            // SAFETY: the tile stays inside `w`, `x` and `out` by the bounds above.
            unsafe {
                match (nr, ni) {
                    (4, 4) => tile::<E, 4, 4>(w, k, x, m, out, r0, i0),
                    (4, 3) => tile::<E, 4, 3>(w, k, x, m, out, r0, i0),
                    (4, 2) => tile::<E, 4, 2>(w, k, x, m, out, r0, i0),
                    (4, 1) => tile::<E, 4, 1>(w, k, x, m, out, r0, i0),
                    (3, _) => tile_dyn::<E, 3>(w, k, x, m, out, r0, i0, ni),
                    (2, _) => tile_dyn::<E, 2>(w, k, x, m, out, r0, i0, ni),
                    _ => tile_dyn::<E, 1>(w, k, x, m, out, r0, i0, ni),
                }
            }
        }
    }
}

/// Tail rows: one input row at a time.
#[inline(always)]
#[allow(clippy::too_many_arguments)] // an inlined microkernel; a struct would cost registers
unsafe fn tile_dyn<E: WideLoad, const R: usize>(
    w: &[E],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    r0: usize,
    i0: usize,
    ni: usize,
) {
    for i in i0..i0 + ni {
        // SAFETY: forwarded from the caller.
        unsafe { tile::<E, R, 1>(w, k, x, m, out, r0, i) };
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)] // an inlined microkernel; a struct would cost registers
unsafe fn tile<E: WideLoad, const R: usize, const M: usize>(
    w: &[E],
    k: usize,
    x: &[f32],
    m: usize,
    out: &mut [f32],
    r0: usize,
    i0: usize,
) {
    // SAFETY (whole body): pointers are offsets of in-bounds rows; loads stay within a row of `k`.
    unsafe {
        let wp: [*const E; R] = std::array::from_fn(|r| w.as_ptr().add((r0 + r) * k));
        let xp: [*const f32; M] = std::array::from_fn(|i| x.as_ptr().add((i0 + i) * k));
        let mut acc = [[_mm512_setzero_ps(); M]; R];
        let full = k / 16 * 16;
        let mut kk = 0;
        while kk < full {
            let xv: [__m512; M] = std::array::from_fn(|i| _mm512_loadu_ps(xp[i].add(kk)));
            for r in 0..R {
                // Ask for the weights a little ahead: rows are short, so the hardware
                // prefetcher barely ramps up within one. Past a row's end is the next row,
                // which the next tile reads; a prefetch never faults.
                _mm_prefetch::<_MM_HINT_T0>(
                    wp[r].add(kk).cast::<i8>().wrapping_add(E::PREFETCH_BYTES),
                );
                let wv = E::load(wp[r].add(kk));
                for i in 0..M {
                    acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
                }
            }
            kk += 16;
        }
        if kk < k {
            let n = k - kk;
            let xv: [__m512; M] = std::array::from_fn(|i| f32::load_partial(xp[i].add(kk), n));
            for r in 0..R {
                let wv = E::load_partial(wp[r].add(kk), n);
                for i in 0..M {
                    acc[r][i] = _mm512_fmadd_ps(wv, xv[i], acc[r][i]);
                }
            }
        }
        for r in 0..R {
            for i in 0..M {
                out[(r0 + r) * m + i0 + i] = _mm512_reduce_add_ps(acc[r][i]);
            }
        }
    }
}

/// Whether this CPU has the AVX-512 BF16 dot-product instructions.
pub(crate) fn has_bf16_dot() -> bool {
    std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// `x` rounded to bf16 (to nearest even) with `vcvtneps2bf16`, 16 values per instruction:
/// what `bf16::from_f32` gives one at a time, except that values below f32's normal range
/// become zero (the instruction flushes them), which no product here can tell.
///
/// # Safety
/// The CPU must have AVX-512F/BF16 ([`has_bf16_dot`]).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(crate) unsafe fn to_bf16(x: &[f32]) -> Vec<bf16> {
    let mut out = vec![bf16::ZERO; x.len()];
    let mut chunks = x.chunks_exact(16);
    for (c, o) in (&mut chunks).zip(out.chunks_exact_mut(16)) {
        // SAFETY: `c` holds 16 floats and `o` 16 bf16 (32 bytes); the CPU is the caller's
        // promise.
        unsafe {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(c.as_ptr()));
            _mm256_storeu_si256(
                o.as_mut_ptr().cast(),
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
        }
    }
    let done = x.len() - chunks.remainder().len();
    for (o, &v) in out[done..].iter_mut().zip(chunks.remainder()) {
        *o = bf16::from_f32(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector rounding to bf16 gives `bf16::from_f32`'s bits for normal values of every
    /// sign and size, ties to even included, and the tail past the last 16 values too.
    #[test]
    fn vector_bf16_rounding_matches_the_scalar_one() {
        if !has_bf16_dot() {
            return;
        }
        let mut s = 0x1234_5678u32;
        let mut x: Vec<f32> = (0..1000)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((s % 200_001) as f32 / 100_000.0 - 1.0) * 10f32.powi(i % 9 - 4)
            })
            .collect();
        // Halfway between two bf16 values: the even one wins.
        x.extend([
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            -0.0,
            0.0,
            65504.0,
        ]);
        x.push(1.5);
        // SAFETY: checked `has_bf16_dot`.
        let got = unsafe { to_bf16(&x) };
        for (g, &v) in got.iter().zip(&x) {
            assert_eq!(g.to_bits(), bf16::from_f32(v).to_bits(), "{v}");
        }
        assert_eq!(got.len(), x.len());
    }
}
