//! Integer dot products on 32-value ggml blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with AVX-512
//! VNNI, for the few-rows (decode) path of [`super::quant`], and their vector dequantization for
//! its gemm path. Since the strips (`quant_strips.rs`) the row kernels here decode only where a
//! matrix has no strips (`WAYFINDER_STRIPS=0`, or a layout strips refuse); the strips and the
//! dequantization still unpack blocks with this file's `Block` impls, which is why the formats,
//! their unpacking and both kernels stay in one file past 600 lines.
//!
//! The activations are quantized once per step to 8 bits per 32-value block, as llama.cpp's
//! Q8_0/Q8_1 do ([`Q8Rows`]: `x ≈ d · q`, `q` in −127..=127, with `d · Σq` kept per block). A
//! weight block is read as unsigned bytes `u` with a scale `dw` and an offset `mw` such that the
//! block's dot product is `dw · d · Σ u·q + mw · d · Σq`:
//!
//! | type | `u` | `mw` |
//! |---|---|---|
//! | Q4_1 | the nibbles (0..=15) | the block's minimum `m` |
//! | Q4_0 | the nibbles | `−8 · dw` (values are `nibble − 8`) |
//! | Q5_1 | nibble + 16 · high bit (0..=31) | the block's minimum `m` |
//! | Q5_0 | nibble + 16 · high bit | `−16 · dw` |
//! | Q8_0 | `q + 128` (the byte with its top bit flipped) | `−128 · dw` |
//!
//! `Σ u·q` over two blocks (64 bytes) is one `vpdpbusd` (unsigned × signed bytes into 16 i32
//! lanes: lanes 0–7 belong to the first block, 8–15 to the second); the lanes are converted to
//! f32 and accumulated with each block's `dw · d`. One weight pair, unpacked once, feeds up to
//! four input rows. Rounding the activations to 8 bits changes the result slightly (as it does
//! in llama.cpp); the tests check against an f64 product of the same quantized activations.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

pub(crate) use super::q8_rows::Q8Rows;
use super::q8_rows::QK;
use super::quant_type::QuantType;

/// Whether this CPU has the instructions these kernels use.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("f16c")
}

/// Whether `ty` has a kernel here.
pub(crate) fn supports(ty: QuantType) -> bool {
    matches!(
        ty,
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q8_0
    )
}

/// `out[i] = Σ_k x[i, k] · w[k]` for one weight row `w` (the blocks of `ty`) and every row of
/// `x`.
///
/// # Safety
/// The CPU must pass [`available`]; `w` must hold `x.cols / 32` blocks of `ty`, which
/// [`supports`] must accept; `out` must hold one value per row of `x`.
pub(crate) unsafe fn row_dot(ty: QuantType, w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4_0 => row_dot_with::<Q4_0>(w, x, out),
            QuantType::Q4_1 => row_dot_with::<Q4_1>(w, x, out),
            QuantType::Q5_0 => row_dot_with::<Q5_0>(w, x, out),
            QuantType::Q5_1 => row_dot_with::<Q5_1>(w, x, out),
            QuantType::Q8_0 => row_dot_with::<Q8_0>(w, x, out),
            _ => unreachable!("supports() admits only Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0"),
        }
    }
}

/// The block at the start of `p`, of type `ty`, as `(dw, mw, u)`: its scale, offset and 32
/// unsigned values (see the module docs), for repacking.
///
/// # Safety
/// The CPU must pass [`available`]; `ty` must be one [`supports`] accepts.
///
/// # Panics
/// If `p` is shorter than a block.
pub(crate) unsafe fn unpack_block(ty: QuantType, p: &[u8]) -> (f32, f32, [u8; QK]) {
    unsafe fn with<B: Block>(p: &[u8]) -> (f32, f32, [u8; QK]) {
        assert!(p.len() >= B::BYTES, "block too short");
        let w = p.as_ptr();
        // SAFETY: the block is readable (checked); the caller vouches for the CPU. Every
        // `u` is at most 255 (Q8_0's `q + 128`).
        unsafe {
            let (d, m) = B::scale(w);
            (d, m, std::array::from_fn(|i| B::value(w, i) as u8))
        }
    }
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4_0 => with::<Q4_0>(p),
            QuantType::Q4_1 => with::<Q4_1>(p),
            QuantType::Q5_0 => with::<Q5_0>(p),
            QuantType::Q5_1 => with::<Q5_1>(p),
            QuantType::Q8_0 => with::<Q8_0>(p),
            _ => unreachable!("supports() admits only Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0"),
        }
    }
}

/// `k` where `ty`'s offset is `mw = k · dw` (Q4_0, Q5_0, Q8_0: values stored unsigned around
/// a fixed middle); `None` where each block stores its own (Q4_1, Q5_1) or `ty` is another type.
pub(crate) fn fixed_offset(ty: QuantType) -> Option<f32> {
    let k = |o: Offset| match o {
        Offset::Times(k) => Some(k),
        Offset::Minimum => None,
    };
    match ty {
        QuantType::Q4_0 => k(Q4_0::OFFSET),
        QuantType::Q5_0 => k(Q5_0::OFFSET),
        QuantType::Q8_0 => k(Q8_0::OFFSET),
        _ => None,
    }
}

/// Where a block format's offset `mw` comes from.
enum Offset {
    /// The f16 stored after the scale (Q4_1, Q5_1).
    Minimum,
    /// A fixed multiple of the scale (Q4_0: −8, Q5_0: −16, Q8_0: −128).
    Times(f32),
}

/// A 32-value block layout read as unsigned bytes, a scale and an offset.
trait Block {
    /// Bytes per block.
    const BYTES: usize;
    /// The 32 unsigned bytes `u` of the blocks at `a` and `b`: `a`'s in the low 256 bits.
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i;
    /// Where `mw` comes from.
    const OFFSET: Offset;

    /// `(dw, mw)` of the block at `p`.
    #[inline(always)]
    unsafe fn scale(p: *const u8) -> (f32, f32) {
        // SAFETY: every block starts with its f16 scale and at least 2 more bytes.
        let (d, m) = unsafe { two_halves(p) };
        match Self::OFFSET {
            Offset::Minimum => (d, m),
            Offset::Times(k) => (d, k * d),
        }
    }

    /// `dw` of the blocks at `a` and `b` in the lanes of a pair (8 each), and `mw` likewise.
    #[inline(always)]
    unsafe fn scales2(a: *const u8, b: *const u8) -> (__m512, __m512) {
        // SAFETY: as `scale`, for both blocks.
        unsafe {
            let v = halves_of_two(a, b);
            let dw = spread(v, 0, 2);
            match Self::OFFSET {
                Offset::Minimum => (dw, spread(v, 1, 3)),
                Offset::Times(k) => (dw, _mm512_mul_ps(dw, _mm512_set1_ps(k))),
            }
        }
    }
    /// The unsigned values `u` of the block at `p`: elements 0–15 and 16–31.
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i);
    /// The unsigned value of element `i` of the block at `p` (the odd tail block).
    unsafe fn value(p: *const u8, i: usize) -> i32;
}

/// The two f16 at `p` as f32.
#[inline(always)]
unsafe fn two_halves(p: *const u8) -> (f32, f32) {
    // SAFETY: the caller guarantees 4 readable bytes; F16C is available.
    unsafe {
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128(p.cast::<i32>().read_unaligned()));
        (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_shuffle_ps::<1>(v, v)))
    }
}

/// The nibbles of 16 bytes at `a` and at `b` as `[a low, a high, b low, b high]` (16 bytes
/// each), which is the order of the values in the blocks.
#[inline(always)]
unsafe fn nibbles2(a: *const u8, b: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 16 readable bytes at each; AVX-512F/BW/VL are available.
    unsafe {
        let w = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(a.cast())),
            _mm_loadu_si128(b.cast()),
        );
        let mask = _mm256_set1_epi8(0x0F);
        let lo = _mm256_and_si256(w, mask);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(w), mask);
        let v = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
        // Lanes (a lo, b lo, a hi, b hi) → (a lo, a hi, b lo, b hi).
        _mm512_shuffle_i64x2::<0b11_01_10_00>(v, v)
    }
}

/// The f16 pairs at `a` and `b` as `[a0, a1, b0, b1]` in f32.
#[inline(always)]
unsafe fn halves_of_two(a: *const u8, b: *const u8) -> __m128 {
    // SAFETY: the caller guarantees 4 readable bytes at each; F16C is available.
    unsafe {
        let lo = a.cast::<i32>().read_unaligned();
        let hi = b.cast::<i32>().read_unaligned();
        _mm_cvtph_ps(_mm_set_epi32(0, 0, hi, lo))
    }
}

/// Lane `k` of the result is `v[idx(k)]` with `idx = first` for lanes 0–7 and `second` for
/// 8–15.
#[inline(always)]
unsafe fn spread(v: __m128, first: i32, second: i32) -> __m512 {
    // SAFETY: AVX-512F is available.
    unsafe {
        let idx = _mm512_set_epi32(
            second, second, second, second, second, second, second, second, first, first, first,
            first, first, first, first, first,
        );
        _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(v))
    }
}

/// The 16 bytes at `p` as their low nibbles and their high nibbles.
#[inline(always)]
unsafe fn nibbles16(p: *const u8) -> (__m128i, __m128i) {
    // SAFETY: the caller guarantees 16 readable bytes.
    unsafe {
        let w = _mm_loadu_si128(p.cast());
        let mask = _mm_set1_epi8(0x0F);
        (
            _mm_and_si128(w, mask),
            _mm_and_si128(_mm_srli_epi16::<4>(w), mask),
        )
    }
}

/// The 5-bit values of a Q5 block: `qs` (16 bytes of nibbles) at `qs`, the high bits (u32) at
/// `qh`; elements 0–15 and 16–31.
#[inline(always)]
unsafe fn five_bits16(qs: *const u8, qh: *const u8) -> (__m128i, __m128i) {
    // SAFETY: the caller guarantees the block's bytes; AVX-512BW/VL are available.
    unsafe {
        let (lo, hi) = nibbles16(qs);
        let h = qh.cast::<u32>().read_unaligned();
        let sixteen = _mm_set1_epi8(0x10);
        (
            _mm_or_si128(lo, _mm_maskz_mov_epi8(h as u16, sixteen)),
            _mm_or_si128(hi, _mm_maskz_mov_epi8((h >> 16) as u16, sixteen)),
        )
    }
}

/// The 5-bit values of the Q5 blocks at `a` and `b` (nibbles at `QS`, high bits at `QH`), in
/// the layout of [`nibbles2`].
#[inline(always)]
unsafe fn five_bits2<const QS: usize, const QH: usize>(a: *const u8, b: *const u8) -> __m512i {
    // SAFETY: the caller guarantees both blocks; AVX-512BW is available.
    unsafe {
        let nib = nibbles2(a.add(QS), b.add(QS));
        let ha = u64::from(a.add(QH).cast::<u32>().read_unaligned());
        let hb = u64::from(b.add(QH).cast::<u32>().read_unaligned());
        _mm512_or_si512(
            nib,
            _mm512_maskz_mov_epi8(ha | hb << 32, _mm512_set1_epi8(0x10)),
        )
    }
}

/// Element `i` of the Q5 block whose nibbles are at `qs` and high bits at `qh`.
#[inline(always)]
unsafe fn five_bit_value(qs: *const u8, qh: *const u8, i: usize) -> i32 {
    // SAFETY: the caller guarantees the block's bytes; `i < 32`.
    unsafe {
        let byte = *qs.add(i % 16);
        let nibble = if i < 16 { byte & 0x0F } else { byte >> 4 };
        let high = (qh.cast::<u32>().read_unaligned() >> i) & 1;
        i32::from(nibble) + 16 * high as i32
    }
}

struct Q4_0;
struct Q4_1;
struct Q5_0;
struct Q5_1;
struct Q8_0;

impl Block for Q5_0 {
    const BYTES: usize = 22;
    const OFFSET: Offset = Offset::Times(-16.0);
    #[inline(always)]
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i) {
        // SAFETY: scale (2), high bits (4), nibbles (16).
        unsafe { five_bits16(p.add(6), p.add(2)) }
    }
    #[inline(always)]
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i {
        // SAFETY: as above, for both blocks.
        unsafe { five_bits2::<6, 2>(a, b) }
    }
    #[inline(always)]
    unsafe fn value(p: *const u8, i: usize) -> i32 {
        // SAFETY: `i < 32`, the block is readable.
        unsafe { five_bit_value(p.add(6), p.add(2), i) }
    }
}

impl Block for Q5_1 {
    const BYTES: usize = 24;
    const OFFSET: Offset = Offset::Minimum;
    #[inline(always)]
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i) {
        // SAFETY: scale and minimum (4), high bits (4), nibbles (16).
        unsafe { five_bits16(p.add(8), p.add(4)) }
    }
    #[inline(always)]
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i {
        // SAFETY: as above, for both blocks.
        unsafe { five_bits2::<8, 4>(a, b) }
    }
    #[inline(always)]
    unsafe fn value(p: *const u8, i: usize) -> i32 {
        // SAFETY: `i < 32`, the block is readable.
        unsafe { five_bit_value(p.add(8), p.add(4), i) }
    }
}

impl Block for Q4_0 {
    const BYTES: usize = 18;
    const OFFSET: Offset = Offset::Times(-8.0);
    #[inline(always)]
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block's 16 nibble bytes start at 2.
        unsafe { nibbles16(p.add(2)) }
    }

    #[inline(always)]
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i {
        // SAFETY: each block's 16 nibble bytes follow its 2-byte scale.
        unsafe { nibbles2(a.add(2), b.add(2)) }
    }
    #[inline(always)]
    unsafe fn value(p: *const u8, i: usize) -> i32 {
        // SAFETY: `i < 32`, the block is readable.
        let byte = unsafe { *p.add(2 + i % 16) };
        i32::from(if i < 16 { byte & 0x0F } else { byte >> 4 })
    }
}

impl Block for Q4_1 {
    const BYTES: usize = 20;
    const OFFSET: Offset = Offset::Minimum;
    #[inline(always)]
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block's 16 nibble bytes start at 4.
        unsafe { nibbles16(p.add(4)) }
    }

    #[inline(always)]
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i {
        // SAFETY: each block's 16 nibble bytes follow its scale and minimum.
        unsafe { nibbles2(a.add(4), b.add(4)) }
    }
    #[inline(always)]
    unsafe fn value(p: *const u8, i: usize) -> i32 {
        // SAFETY: `i < 32`, the block is readable.
        let byte = unsafe { *p.add(4 + i % 16) };
        i32::from(if i < 16 { byte & 0x0F } else { byte >> 4 })
    }
}

impl Block for Q8_0 {
    const BYTES: usize = 34;
    const OFFSET: Offset = Offset::Times(-128.0);
    #[inline(always)]
    unsafe fn unsigned16x2(p: *const u8) -> (__m128i, __m128i) {
        // SAFETY: the block's 32 value bytes start at 2; flipping the top bit adds 128.
        unsafe {
            let flip = _mm_set1_epi8(i8::MIN);
            (
                _mm_xor_si128(_mm_loadu_si128(p.add(2).cast()), flip),
                _mm_xor_si128(_mm_loadu_si128(p.add(18).cast()), flip),
            )
        }
    }
    #[inline(always)]
    unsafe fn bytes2(a: *const u8, b: *const u8) -> __m512i {
        // SAFETY: each block's 32 value bytes follow its 2-byte scale.
        unsafe {
            let v = _mm512_inserti64x4::<1>(
                _mm512_castsi256_si512(_mm256_loadu_si256(a.add(2).cast())),
                _mm256_loadu_si256(b.add(2).cast()),
            );
            _mm512_xor_si512(v, _mm512_set1_epi8(i8::MIN))
        }
    }
    #[inline(always)]
    unsafe fn value(p: *const u8, i: usize) -> i32 {
        // SAFETY: `i < 32`, the block is readable.
        i32::from(unsafe { *p.add(2 + i) } as i8) + 128
    }
}

/// Dequantizes the blocks of `ty` in `bytes` into `out` (32 values a block), 16 lanes at a
/// time: the many-rows path widens weight tiles for gemm with this.
///
/// # Safety
/// The CPU must pass [`available`]; [`supports`] must accept `ty`; `bytes` must hold whole
/// blocks, `out.len() / 32` of them.
pub(crate) unsafe fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4_0 => dequantize_with::<Q4_0>(bytes, out),
            QuantType::Q4_1 => dequantize_with::<Q4_1>(bytes, out),
            QuantType::Q5_0 => dequantize_with::<Q5_0>(bytes, out),
            QuantType::Q5_1 => dequantize_with::<Q5_1>(bytes, out),
            QuantType::Q8_0 => dequantize_with::<Q8_0>(bytes, out),
            _ => unreachable!("supports() admits only Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn dequantize_with<B: Block>(bytes: &[u8], out: &mut [f32]) {
    let nb = out.len() / QK;
    assert!(
        bytes.len() >= nb * B::BYTES && out.len() == nb * QK,
        "blocks and values disagree"
    );
    for (b, o) in out.chunks_exact_mut(QK).enumerate() {
        // SAFETY: block `b` lies in `bytes` (asserted); `o` holds 32 values.
        unsafe {
            let p = bytes.as_ptr().add(b * B::BYTES);
            let (d, m) = B::scale(p);
            let (lo, hi) = B::unsigned16x2(p);
            let (d, m) = (_mm512_set1_ps(d), _mm512_set1_ps(m));
            let widen = |v: __m128i| _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(v));
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_fmadd_ps(widen(lo), d, m));
            _mm512_storeu_ps(o.as_mut_ptr().add(16), _mm512_fmadd_ps(widen(hi), d, m));
        }
    }
}

/// How far ahead weights are prefetched.
pub(crate) const PREFETCH_BYTES: usize = 4096;

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn row_dot_with<B: Pairs>(w: &[u8], x: &Q8Rows, out: &mut [f32]) {
    let nb = x.blocks();
    assert!(w.len() >= B::row_bytes(nb), "weight row too short");
    let m = out.len();
    assert!(x.qs.len() >= m * x.cols, "activation rows too few");
    assert!(
        x.has_lanes(),
        "activations without lanes (Q8Rows::with_lanes)"
    );
    // The weight pair is unpacked once per tile: tiles as wide as the registers allow.
    let mut i0 = 0;
    while i0 < m {
        let n = match m - i0 {
            16.. => 16,
            8..16 => 8,
            r => r.min(4),
        };
        let o = &mut out[i0..i0 + n];
        // SAFETY: the asserts above; the CPU features are this function's.
        unsafe {
            match n {
                16 => tile::<B, 16>(w, x, i0, o),
                8 => tile::<B, 8>(w, x, i0, o),
                1 => tile::<B, 1>(w, x, i0, o),
                2 => tile::<B, 2>(w, x, i0, o),
                3 => tile::<B, 3>(w, x, i0, o),
                _ => tile::<B, 4>(w, x, i0, o),
            }
        }
        i0 += n;
    }
}

/// `out[j] = Σ_k x[i0 + j, k] · w[k]` for `j < N`.
///
/// # Safety
/// As [`row_dot_with`], which checks the lengths.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn tile<P: Pairs, const N: usize>(
    w: &[u8],
    x: &Q8Rows,
    i0: usize,
    out: &mut [f32],
) {
    let nb = x.blocks();
    let pairs = nb / 2;
    let wp = w.as_ptr();
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY: blocks `2p`, `2p + 1` < `nb` lie in `w`; activation blocks and lane vectors of
    // rows `i0 + j` lie in `x` (checked by the caller).
    unsafe {
        for p in 0..pairs {
            let b = 2 * p;
            let (u, dw, mw) = P::pair(wp, p);
            for (j, acc) in acc.iter_mut().enumerate() {
                let row = i0 + j;
                let q = _mm512_loadu_si512(x.qs_at(row, b).cast());
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q);
                let lanes = (row * pairs + p) * 16;
                let dx = _mm512_loadu_ps(x.d_lanes.as_ptr().add(lanes));
                let ds = _mm512_loadu_ps(x.ds_lanes.as_ptr().add(lanes));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw, dx), *acc);
                *acc = _mm512_fmadd_ps(mw, ds, *acc);
            }
        }
        for (j, (o, acc)) in out.iter_mut().zip(acc).enumerate() {
            let mut sum = _mm512_reduce_add_ps(acc);
            if nb % 2 == 1 {
                sum += P::last_block(wp, nb - 1, x, i0 + j);
            }
            *o = sum;
        }
    }
}

/// `out[r * n + j] = Σ_k x[j, k] · w[r][k]` for the `R` weight rows `w` (blocks of one
/// type) and every row `j` of `x` (`n` = its rows, at most [`group_width`]`(R)`): the
/// decode path's product, where each pair of activation blocks is loaded once for all `R`
/// weight rows and one call's overhead (checks, reductions) is shared by them. Each output is
/// accumulated in the same order as [`row_dot_with`]'s, so the two agree bit for bit.
///
/// # Safety
/// The CPU must pass [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn rows_dot_with<B: Pairs, const R: usize>(
    w: [&[u8]; R],
    x: &Q8Rows,
    out: &mut [f32],
) {
    let nb = x.blocks();
    assert!(
        w.iter().all(|row| row.len() >= B::row_bytes(nb)),
        "weight row too short"
    );
    let n = x.rows();
    assert!(
        (1..=group_width(R)).contains(&n) && out.len() == R * n,
        "{n} activation rows for {R} weight rows"
    );
    assert!(
        x.has_lanes(),
        "activations without lanes (Q8Rows::with_lanes)"
    );
    let rows = w.map(<[u8]>::as_ptr);
    // SAFETY: the asserts above; the CPU features are this function's.
    unsafe {
        match n {
            1 => group::<B, R, 1>(&rows, x, out),
            2 => group::<B, R, 2>(&rows, x, out),
            3 => group::<B, R, 3>(&rows, x, out),
            _ => group::<B, R, 4>(&rows, x, out),
        }
    }
}

/// The most activation rows [`rows_dot_with`] takes with `r` weight rows: eight
/// accumulators in all, beside the activation vectors, fit the 32 vector registers.
pub(crate) const fn group_width(r: usize) -> usize {
    if r >= 4 { 2 } else { 4 }
}

/// [`rows_dot_with`] for `N` activation rows.
///
/// # Safety
/// As [`rows_dot_with`], which checks the lengths.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn group<P: Pairs, const R: usize, const N: usize>(
    w: &[*const u8; R],
    x: &Q8Rows,
    out: &mut [f32],
) {
    let nb = x.blocks();
    let pairs = nb / 2;
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    // SAFETY: blocks `2p`, `2p + 1` < `nb` lie in every weight row; activation blocks and lane
    // vectors of rows `j < N` lie in `x` (checked by the caller).
    unsafe {
        for p in 0..pairs {
            let b = 2 * p;
            let mut q = [_mm512_setzero_si512(); N];
            let mut dx = [_mm512_setzero_ps(); N];
            let mut ds = [_mm512_setzero_ps(); N];
            for j in 0..N {
                q[j] = _mm512_loadu_si512(x.qs_at(j, b).cast());
                let lanes = (j * pairs + p) * 16;
                dx[j] = _mm512_loadu_ps(x.d_lanes.as_ptr().add(lanes));
                ds[j] = _mm512_loadu_ps(x.ds_lanes.as_ptr().add(lanes));
            }
            for (row, acc) in w.iter().zip(acc.iter_mut()) {
                let (u, dw, mw) = P::pair(*row, p);
                for j in 0..N {
                    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, q[j]);
                    let scale = _mm512_mul_ps(dw, dx[j]);
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc[j]);
                    acc[j] = _mm512_fmadd_ps(mw, ds[j], acc[j]);
                }
            }
        }
        for (r, (row, acc)) in w.iter().zip(acc).enumerate() {
            for (j, acc) in acc.into_iter().enumerate() {
                let mut sum = _mm512_reduce_add_ps(acc);
                if nb % 2 == 1 {
                    sum += P::last_block(*row, nb - 1, x, j);
                }
                out[r * N + j] = sum;
            }
        }
    }
}

/// `out[r * n + j]` for weight rows `w` of type `ty`: [`rows_dot_with`] for the types of
/// this file.
///
/// # Safety
/// As [`row_dot`], for every row of `w`; `x` has at most [`group_width`]`(R)` rows.
pub(crate) unsafe fn rows_dot<const R: usize>(
    ty: QuantType,
    w: [&[u8]; R],
    x: &Q8Rows,
    out: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match ty {
            QuantType::Q4_0 => rows_dot_with::<Q4_0, R>(w, x, out),
            QuantType::Q4_1 => rows_dot_with::<Q4_1, R>(w, x, out),
            QuantType::Q5_0 => rows_dot_with::<Q5_0, R>(w, x, out),
            QuantType::Q5_1 => rows_dot_with::<Q5_1, R>(w, x, out),
            QuantType::Q8_0 => rows_dot_with::<Q8_0, R>(w, x, out),
            _ => unreachable!("supports() admits only Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0"),
        }
    }
}

/// A weight row read as pairs of 32-value blocks, the unit of [`tile`].
pub(crate) trait Pairs {
    /// Bytes of a row of `blocks` 32-value blocks.
    fn row_bytes(blocks: usize) -> usize;
    /// Pair `p` of the row at `w`: its 64 unsigned bytes `u`, and each lane's `dw` and `mw`.
    ///
    /// # Safety
    /// The row must hold pair `p`; the CPU must pass [`available`].
    unsafe fn pair(w: *const u8, p: usize) -> (__m512i, __m512, __m512);
    /// The product of block `b`, the odd last one, with row `row` of `x`.
    ///
    /// # Safety
    /// The row must hold block `b`.
    unsafe fn last_block(w: *const u8, b: usize, x: &Q8Rows, row: usize) -> f32;
}

impl<B: Block> Pairs for B {
    fn row_bytes(blocks: usize) -> usize {
        blocks * B::BYTES
    }

    #[inline(always)]
    unsafe fn pair(w: *const u8, p: usize) -> (__m512i, __m512, __m512) {
        // SAFETY: blocks `2p` and `2p + 1` lie in the row (the caller's promise).
        unsafe {
            let (pa, pb) = (w.add(2 * p * B::BYTES), w.add((2 * p + 1) * B::BYTES));
            // The rows of a task lie one after another: fetch ahead across row ends (a
            // prefetch never faults, even past the mapping).
            _mm_prefetch::<_MM_HINT_T0>(pa.wrapping_add(PREFETCH_BYTES).cast());
            let (dw, mw) = B::scales2(pa, pb);
            (B::bytes2(pa, pb), dw, mw)
        }
    }

    unsafe fn last_block(w: *const u8, b: usize, x: &Q8Rows, row: usize) -> f32 {
        // SAFETY: block `b` lies in the row; `x` holds row `row`.
        unsafe {
            let p = w.add(b * B::BYTES);
            let (d, mw) = B::scale(p);
            let q = x.qs_at(row, b);
            let dot: i32 = (0..QK).map(|k| B::value(p, k) * i32::from(*q.add(k))).sum();
            let xb = row * x.blocks() + b;
            d * x.d[xb] * dot as f32 + mw * x.ds[xb]
        }
    }
}
