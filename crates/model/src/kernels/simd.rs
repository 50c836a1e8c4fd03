//! Small vector kernels with runtime CPU dispatch.
//!
//! The code is written once, in a shape LLVM vectorises (fixed-width lane arrays, several
//! independent accumulators), and compiled three times: for AVX-512, for AVX2 + FMA, and for the
//! baseline. [`Isa::detect`] picks one at run time, so the binary runs on any x86-64 (and any
//! other target, through the baseline) while using the wide registers where they exist.
//!
//! Callers dispatch once per unit of work (a row block, an attention task), not per dot product,
//! so that the kernels inline into the loops that use them.

use half::{bf16, f16};

/// Lanes per accumulator block: two AVX-512 registers, four AVX2 ones.
const LANES: usize = 32;

/// The instruction set a kernel was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// x86-64 with AVX-512F.
    Avx512,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// Anything else.
    Baseline,
}

impl Isa {
    /// The best instruction set this CPU has.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            // Every AVX-512 kernel here also uses BW and VL (masked byte and word loads) and
            // F16C (the KV cache's halves); Xeon Phi has AVX-512F without them.
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
            {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self::Avx2;
            }
        }
        Self::Baseline
    }
}

/// Weight element types a kernel can read, widened to f32 on the fly.
pub(crate) trait Element: Copy + Send + Sync + 'static {
    /// The value as f32.
    fn to_f32(self) -> f32;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // bf16 is the top half of an f32: a shift, which vectorises.
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

/// `Σ a[i] · b[i]`, with `b` widened to f32.
#[inline(always)]
pub(crate) fn dot<E: Element>(a: &[f32], b: &[E]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES;
    for c in 0..chunks {
        let (x, y) = (&a[c * LANES..][..LANES], &b[c * LANES..][..LANES]);
        for i in 0..LANES {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    let mut sum = 0.0;
    for i in chunks * LANES..a.len() {
        sum += a[i] * b[i].to_f32();
    }
    // Pairwise reduction of the lanes.
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            acc[i] += acc[i + width];
        }
        width /= 2;
    }
    acc[0] + sum
}

/// `y[i] += alpha · x[i]`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// `e^x` to about 2 ulp for `x` in [-87, 88] (0 below, +inf above), in a form that vectorises
/// (Cephes' `expf`: range reduction by ln 2, a degree-6 polynomial, the exponent put back by bit
/// arithmetic).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5 · 2^23 rounds to the nearest integer without a call to
    // `floorf`, so that the whole function vectorises; the sum's bits hold that integer too
    // (its mantissa is 2^22 + n), read as an integer without `as i32`, whose saturating
    // conversion compiled to a scalar convert and insert per lane (~15 % of a long prompt's
    // attention in `perf annotate`).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let n_int = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    f32::from_bits((y.to_bits() as i32 + (n_int << 23)) as u32)
}

/// In-place softmax of `x`.
///
/// The maximum and the sum run over 16 lanes, then across them: a sequential f32 sum cannot
/// be vectorised (its order is the result), and kept the whole loop, `exp` included, scalar
/// (measured: attention was 25 % of a 512-token Q8_0 prefill). The order depends only on
/// `x.len()`, so a row's softmax is the same whatever else is computed beside it.
#[inline(always)]
pub(crate) fn softmax(x: &mut [f32]) {
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l = l.max(v);
        }
    }
    let max = lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp(*v - max);
    }
    let mut lanes = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `out[i] = silu(gate[i]) · up[i]` (SwiGLU), compiled for `isa` so that `exp` runs 16 lanes
/// wide (the baseline build has SSE2 only).
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32], isa: Isa) {
    dispatch!(isa, || {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    });
}

/// Runs `f` compiled for `isa`. `f` must be `#[inline(always)]`-friendly code: it is
/// instantiated inside a function carrying the target features.
macro_rules! dispatch {
    ($isa:expr, $body:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
            unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            match $isa {
                // SAFETY: `Isa::detect` found these features on this CPU.
                $crate::kernels::simd::Isa::Avx512 => unsafe { avx512($body) },
                // SAFETY: as above.
                $crate::kernels::simd::Isa::Avx2 => unsafe { avx2($body) },
                $crate::kernels::simd::Isa::Baseline => ($body)(),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $isa;
            ($body)()
        }
    }};
}
pub(crate) use dispatch;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + i as f32 * (87.0 + 10.0) / 200_000.0;
            let want = f64::from(x).exp();
            let rel = ((f64::from(exp(x)) - want) / want).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        // The exponent read from the rounding's bits is the rounded value's, up to 88: taking
        // 2^n (`n` converted the plain way, `as i32`) back out leaves e^r, |r| ≤ ln 2 / 2.
        for i in 0..=200_000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 200_000.0;
            let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
            let y = exp(x).to_bits() as i32 - ((n as i32) << 23);
            let m = f32::from_bits(y as u32);
            assert!((0.70..1.42).contains(&m), "{x}: mantissa part {m}");
        }
        let mut p = vec![1.0, 2.0, 3.0];
        softmax(&mut p);
        let z: f32 = [1f32, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((p[2] - 3f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn dot_matches_a_plain_sum_for_every_element_type_and_length() {
        for len in [0, 1, 31, 32, 33, 64, 100, 576] {
            let a: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..len).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let isa = Isa::detect();
            let got = dispatch!(isa, || dot(&a, &b));
            assert!((f64::from(got) - want).abs() < 1e-4, "len {len}");
            let b16: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
            let want16: f64 = a
                .iter()
                .zip(&b16)
                .map(|(x, y)| f64::from(*x) * f64::from(y.to_f32()))
                .sum();
            assert!(
                (f64::from(dot(&a, &b16)) - want16).abs() < 1e-4,
                "bf16 len {len}"
            );
            let h: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
            let wanth: f64 = a
                .iter()
                .zip(&h)
                .map(|(x, y)| f64::from(*x) * f64::from(y.to_f32()))
                .sum();
            assert!(
                (f64::from(dot(&a, &h)) - wanth).abs() < 1e-4,
                "f16 len {len}"
            );
        }
    }
}
