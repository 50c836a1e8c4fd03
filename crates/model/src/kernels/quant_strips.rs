//! Quantized weights repacked in strips of 16 rows, and the integer product on them that the
//! integer path (8-bit activations, `quant.rs`) runs for Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
//! Q5_K and Q6_K (Q5_K has no row kernel: on strips alone).
//!
//! The kernels of `quant_vnni.rs` read a weight row as ggml stores it: one `vpdpbusd` covers
//! 64 values of one row, its 16 lanes are partial sums inside two blocks, and every such
//! instruction needs four more (convert, scale, two multiply-adds) to bring the lanes into f32
//! with their blocks' scales. Here the lanes are rows instead, as in llama.cpp's repacked
//! layouts: a strip holds, for each 32-value block, 16 rows' scales and their values
//! interleaved four bytes at a time, so that one `vpdpbusd` with an activation group
//! broadcast adds four products to each of 16 rows' block sums, eight of them finish the block,
//! and only then do the f32 steps run — once per 16 rows and block instead of once per 64
//! values. Weight vectors are unpacked once per block and serve up to [`MAX_N`] activation
//! rows; each output row's sum runs in the same order whatever the other rows, so a row's
//! result does not depend on which rows share its product.
//!
//! Each part of a matrix (q, k and v may differ in type) has its own strips, laid out for its
//! type. A strip's block: the scales, then the unsigned values `u` (see `quant_vnni.rs`: a
//! block's product is `dw · d · Σ u·q + mw · d · Σq`). Scales:
//! - [`F16`] (Q4_1, Q5_1): 16 rows' `dw`, then their `mw`, as f16;
//! - [`F16S`] (Q4_0, Q5_0, Q8_0): `dw` alone; the type's offset is `mw = k · dw`;
//! - [`K1`] (Q4_K, Q5_K), [`K2`] (Q6_K): each 256 values' `D` and `M` once per row in a group
//!   header (f32), and per block (Q4_K, Q5_K) or 16-value half (Q6_K, whose sums then take their own
//!   scale and the activations' `d · Σq` of that half) 8-bit multipliers of ggml's scales, so
//!   that `dw = D · a` and `mw = M · c`, exact in f32.
//!
//! Values:
//! - **nibbles** ([`NIB`]: Q4_0, Q4_1, Q4_K, `u` < 16): 4 vectors of 64 bytes; in vector `v`,
//!   row `r`'s 4 bytes hold values `8v + t` (low nibble) and `8v + 4 + t` (high nibble),
//!   `t < 4` — the same 16 bytes per row as ggml's;
//! - **nibbles and a fifth bit** ([`NIB5`]: Q5_0, Q5_1, Q5_K, `u` < 32): the same nibbles, then 8
//!   masks of 64 bits, mask `g`'s bit `4r + t` the fifth bit of row `r`'s value `4g + t`;
//! - **bytes** ([`BYTES`]: Q8_0, Q6_K): 8 vectors; in vector `g`, row `r`'s 4 bytes are values
//!   `4g..4g + 4`.
//!
//! Memory: strips cost, per 32 values, 34 bytes for Q8_0 (34 as stored), 18 for Q4_0 (18), 20
//! for Q4_1 (20), 22 for Q5_0 (22), 24 for Q5_1 (24), 19 for Q4_K (18), 22.5 for Q5_K (22)
//! and 37 for Q6_K (26.25), on top of the blocks as stored. Against f32 scales per block and
//! bytes for every type but the 4-bit ones (the layout until 2026-12-02), a Q4_K_M file of
//! SmolLM2-135M (Q5_0 and Q8_0 where its 576 columns rule out k-quants) went from 254 to 212
//! MB of weights.
//!
//! Rows past a part's end in its last strip are zero (scales too) and never written out. The
//! strips are a copy: the matrix keeps its original blocks for the f32 paths.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::f16;

use super::quant_type::QuantType;
use super::quant_vnni::{PREFETCH_BYTES, Q8Rows, unpack_block};

/// Rows per strip: one output per `vpdpbusd` lane.
pub(crate) const STRIP: usize = 16;

/// The most activation rows one pass over a strip takes (one accumulator register each).
const MAX_N: usize = 16;

/// Values per block.
const QK: usize = 32;

/// How a strip block stores its scales: [`F16`] (`dw`, `mw`), [`F16S`] (`dw` alone, where a
/// type's offset is `mw = k · dw`: Q4_0, Q5_0, Q8_0; `quant_vnni::fixed_offset`), or for the
/// k-quants [`K1`] (Q4_K) and [`K2`] (Q6_K): `dw = D · a`, `mw = M · c` with f32 `D` and `M`
/// per row and 256 values (a group header) and 8-bit multipliers `a`, `c` per row and block
/// ([`K1`]) or per row and 16-value half ([`K2`]).
const F16: u8 = 0;
const F16S: u8 = 1;
const K1: u8 = 2;
const K2: u8 = 3;

/// How a strip block stores its values `u`: [`NIB`] (4 vectors of nibbles), [`NIB5`] (the same
/// and 8 masks of each value's fifth bit), [`BYTES`] (8 vectors); see the module docs.
const NIB: u8 = 0;
const NIB5: u8 = 1;
const BYTES: u8 = 2;

/// The scales and values layout of a part of `ty`.
fn layout_of(ty: QuantType) -> (u8, u8) {
    let kind = match ty {
        QuantType::Q4K | QuantType::Q5K => K1,
        QuantType::Q6K => K2,
        t if super::quant_vnni::fixed_offset(t).is_some() => F16S,
        _ => F16,
    };
    let values = match ty {
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q4K => NIB,
        QuantType::Q5_0 | QuantType::Q5_1 | QuantType::Q5K => NIB5,
        _ => BYTES,
    };
    (kind, values)
}

/// Bytes of a strip block's values.
const fn value_bytes(values: u8) -> usize {
    STRIP
        * match values {
            NIB => QK / 2,
            NIB5 => QK / 2 + QK / 8,
            _ => QK,
        }
}

/// Bytes of a strip block's scales and offsets.
const fn scale_bytes(kind: u8) -> usize {
    match kind {
        F16 => 2 * STRIP * 2,
        F16S => STRIP * 2,
        K1 => 2 * STRIP,
        _ => 4 * STRIP,
    }
}

/// Whether blocks of `kind` come in groups of 8 after a header of `D` and `M`.
const fn grouped(kind: u8) -> bool {
    matches!(kind, K1 | K2)
}

/// Bytes of a group header: 16 rows' `D`, then their `M`, as f32.
const GROUP_HEADER: usize = 2 * STRIP * 4;

/// Blocks per group ([`grouped`] kinds): one k-quant block of 256 values.
const GROUP: usize = 8;

/// Bytes of a strip of `blocks` blocks of `block_bytes` as `kind` lays them out.
const fn strip_bytes(kind: u8, blocks: usize, block_bytes: usize) -> usize {
    if grouped(kind) {
        blocks * block_bytes + blocks / GROUP * GROUP_HEADER
    } else {
        blocks * block_bytes
    }
}

/// Where block `b` starts in a strip of `kind`.
#[inline(always)]
const fn block_offset(kind: u8, b: usize, block_bytes: usize) -> usize {
    if grouped(kind) {
        (b / GROUP) * (GROUP_HEADER + GROUP * block_bytes) + GROUP_HEADER + b % GROUP * block_bytes
    } else {
        b * block_bytes
    }
}

/// Whether `ty` can be repacked here.
pub(crate) fn supports(ty: QuantType) -> bool {
    super::quant_vnni::supports(ty)
        || matches!(ty, QuantType::Q4K | QuantType::Q5K | QuantType::Q6K)
}

/// Q6_K's bytes per 256-value block.
const Q6K_BYTES: usize = 210;

/// Q4_K's bytes per 256-value block.
const Q4K_BYTES: usize = 144;

/// Q5_K's bytes per 256-value block: `d`, `dmin`, 12 scale bytes, 32 of fifth bits (`qh`),
/// 128 of nibbles (`qs`).
const Q5K_BYTES: usize = 176;

/// One 32-value block of a k-quant row as [`K1`] and [`K2`] store it: `D` and `M` of its 256
/// values, the multipliers `a` and `c` of each half (`dw = D · a`, `mw = M · c`), and `u`.
struct KUnpacked {
    d: f32,
    m: f32,
    a: [i8; 2],
    c: [i8; 2],
    u: [u8; QK],
}

/// Block `b` of a Q4_K, Q5_K or Q6_K row in [`KUnpacked`] form: for Q4_K and Q5_K `D = d`,
/// `a` the 6-bit scale, `M = −dmin`, `c` the 6-bit minimum; for Q6_K `D = d`, `a` each half's
/// 8-bit scale, `M = −32 · d`, `c = a`. Each `D · a` and `M · c` is exact in f32 (at most
/// 11 + 8 bits of mantissa), so equal to ggml's `d · scale` and `dmin · min` (or
/// `−32 · d · scale`).
fn unpack_k(ty: QuantType, row: &[u8], b: usize) -> KUnpacked {
    if matches!(ty, QuantType::Q4K | QuantType::Q5K) {
        let bytes = if ty == QuantType::Q4K {
            Q4K_BYTES
        } else {
            Q5K_BYTES
        };
        let block = &row[b / 8 * bytes..][..bytes];
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let dmin = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let (scale, min) = super::kquant_avx512::scale_min_k4(b % 8, &block[4..16]);
        let u = if ty == QuantType::Q4K {
            q4k_values(block, b % 8)
        } else {
            q5k_values(block, b % 8)
        };
        // 6-bit scale and minimum: they fit an i8.
        let (a, c) = (scale as i8, min as i8);
        return KUnpacked {
            d,
            m: -dmin,
            a: [a; 2],
            c: [c; 2],
            u,
        };
    }
    let block = &row[b / 8 * Q6K_BYTES..][..Q6K_BYTES];
    let u = q6k_values(block, b % 8);
    let d = f16::from_le_bytes([block[208], block[209]]).to_f32();
    let (h, quarter) = ((b % 8) / 4, (b % 8) % 4);
    let a = [0, 1].map(|i| block[192 + 8 * h + 2 * quarter + i] as i8);
    KUnpacked {
        d,
        m: -32.0 * d,
        a,
        c: a,
        u,
    }
}

/// Q6_K's values `32c..32c + 32` of `block` (ggml's `dequantize_row_q6_K`): half `h = c / 4`,
/// quarter `c % 4`; each the 6-bit unsigned value (low nibble from `ql`, two high bits from
/// `qh`; the value is `u − 32`).
fn q6k_values(block: &[u8], c: usize) -> [u8; QK] {
    let (h, quarter) = (c / 4, c % 4);
    let ql = &block[64 * h + 32 * (quarter % 2)..][..32];
    let qh = &block[128 + 32 * h..][..32];
    let shift = if quarter >= 2 { 4 } else { 0 };
    std::array::from_fn(|l| ((ql[l] >> shift) & 0x0F) | (((qh[l] >> (2 * quarter)) & 3) << 4))
}

/// The 5-bit values of Q5_K's sub-block `j` of `block` (ggml's `dequantize_row_q5_K`): the
/// low nibble (`j` even) or high nibble of `qs[32 · (j / 2)..]`, and bit `j` of `qh`.
fn q5k_values(block: &[u8], j: usize) -> [u8; QK] {
    let qh = &block[16..48];
    let qs = &block[48 + 32 * (j / 2)..][..32];
    let shift = if j % 2 == 1 { 4 } else { 0 };
    std::array::from_fn(|l| ((qs[l] >> shift) & 0x0F) | (((qh[l] >> j) & 1) << 4))
}

/// The 4-bit values of Q4_K's sub-block `j` of `block`: the low nibble (`j` even) or high
/// nibble of `qs[32 · (j / 2)..]`.
fn q4k_values(block: &[u8], j: usize) -> [u8; QK] {
    let qs = &block[16 + 32 * (j / 2)..][..32];
    let shift = if j % 2 == 1 { 4 } else { 0 };
    std::array::from_fn(|t| (qs[t] >> shift) & 0x0F)
}

/// One part of a matrix to repack: rows of one type, one after another.
pub(crate) struct PartRows<'a> {
    pub(crate) ty: QuantType,
    /// The part's rows, one after another.
    pub(crate) bytes: &'a [u8],
    pub(crate) rows: usize,
    /// The part's first row in the matrix.
    pub(crate) first: usize,
}

/// A matrix's rows in strips, each part's laid out for its type; see the module docs.
#[derive(Debug)]
pub(crate) struct Strips {
    parts: Vec<PartStrips>,
    /// Each part's first strip.
    starts: Vec<usize>,
}

impl Strips {
    /// Repacks `parts` (each of a type [`supports`] accepts, `cols` a multiple of 32, of 256
    /// for the k-quants); `None` when a part cannot be (another type, or a Q4_1 or Q5_1
    /// offset that f16 would change), and the matrix keeps the row kernels.
    ///
    /// # Safety
    /// The CPU must pass `quant_vnni::available`.
    pub(crate) unsafe fn new(parts: &[PartRows<'_>], cols: usize) -> Option<Self> {
        let (mut all, mut starts, mut n) = (Vec::new(), Vec::new(), 0);
        for p in parts {
            // SAFETY: forwarded from the caller.
            let strips = unsafe { PartStrips::new(p, cols) }?;
            starts.push(n);
            n += strips.len();
            all.push(strips);
        }
        Some(Self { parts: all, starts })
    }

    /// Strips held.
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(PartStrips::len).sum()
    }

    /// The part holding strip `s`, and `s` within it.
    fn find(&self, s: usize) -> (&PartStrips, usize) {
        let i = self.starts.partition_point(|&start| start <= s) - 1;
        (&self.parts[i], s - self.starts[i])
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }

    /// `out[j][r] = Σ_k x[j, k] · w[r0 + r, k]` for strip `s` and every row `j` of `x`, lanes
    /// `r` past the strip's real rows left zero; returns the strip's first output row `r0` and
    /// its real rows (one lookup of the strip's part for both).
    ///
    /// # Safety
    /// The CPU must pass `quant_vnni::available`.
    ///
    /// # Panics
    /// If `x` does not have this matrix's columns or `out` is not one row per row of `x`.
    pub(crate) unsafe fn dot(
        &self,
        s: usize,
        x: &Q8Rows,
        out: &mut [[f32; STRIP]],
    ) -> (usize, usize) {
        let (part, s) = self.find(s);
        // SAFETY: forwarded from the caller.
        unsafe { part.dot(s, x, out) };
        part.strips[s]
    }
}

/// One part's rows in strips.
#[derive(Debug)]
struct PartStrips {
    blocks: usize,
    /// How the blocks store their values ([`NIB`], [`NIB5`], [`BYTES`]).
    values: u8,
    /// How the blocks store their scales ([`F16`], [`F16S`], [`K1`], [`K2`]).
    kind: u8,
    /// [`F16S`]'s `k` (`mw = k · dw`).
    offset: f32,
    /// Bytes per strip: its blocks and, for [`grouped`] kinds, a header per 8 blocks.
    strip_bytes: usize,
    data: Vec<u8>,
    /// Each strip's first output row and how many of its rows are real.
    strips: Vec<(usize, usize)>,
}

impl PartStrips {
    /// The strips of part `p`; see [`Strips::new`].
    ///
    /// # Safety
    /// As [`Strips::new`].
    unsafe fn new(p: &PartRows<'_>, cols: usize) -> Option<Self> {
        if !supports(p.ty) || !cols.is_multiple_of(p.ty.block_values()) {
            return None;
        }
        let (kind, values) = layout_of(p.ty);
        let offset = super::quant_vnni::fixed_offset(p.ty).unwrap_or(0.0);
        let blocks = cols / QK;
        let scales = scale_bytes(kind);
        let block_bytes = scales + value_bytes(values);
        let strip_bytes = strip_bytes(kind, blocks, block_bytes);
        let strips: Vec<_> = (0..p.rows)
            .step_by(STRIP)
            .map(|r0| (p.first + r0, STRIP.min(p.rows - r0)))
            .collect();
        let mut data = vec![0u8; strips.len() * strip_bytes];
        let row_bytes = cols / p.ty.block_values() * p.ty.block_bytes();
        assert!(
            p.bytes.len() >= p.rows * row_bytes,
            "part shorter than its rows"
        );
        for (s, strip) in data.chunks_exact_mut(strip_bytes).enumerate() {
            let r0 = s * STRIP;
            for r in 0..STRIP.min(p.rows - r0) {
                let row = &p.bytes[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
                for b in 0..blocks {
                    let at = block_offset(kind, b, block_bytes);
                    if grouped(kind) {
                        let k = unpack_k(p.ty, row, b);
                        let header = &mut strip[at - b % GROUP * block_bytes - GROUP_HEADER..];
                        header[4 * r..4 * r + 4].copy_from_slice(&k.d.to_le_bytes());
                        header[4 * (STRIP + r)..4 * (STRIP + r) + 4]
                            .copy_from_slice(&k.m.to_le_bytes());
                        let out = &mut strip[at..at + block_bytes];
                        let halves = if kind == K2 { 2 } else { 1 };
                        for h in 0..halves {
                            out[STRIP * h + r] = k.a[h] as u8;
                            out[STRIP * (halves + h) + r] = k.c[h] as u8;
                        }
                        place_values(&mut out[scales..], r, &k.u, values);
                        continue;
                    }
                    let out = &mut strip[at..at + block_bytes];
                    // SAFETY: the caller vouches for the CPU; `supports` checked the type; the
                    // row holds `cols / 32` blocks of 32 values.
                    let (dw, mw, u) = unsafe { unpack_block(p.ty, &row[b * p.ty.block_bytes()..]) };
                    if !place_scales(&mut out[..scales], r, dw, mw, kind) {
                        return None;
                    }
                    place_values(&mut out[scales..], r, &u, values);
                }
            }
        }
        Some(Self {
            blocks,
            values,
            kind,
            offset,
            strip_bytes,
            data,
            strips,
        })
    }

    /// Strips held.
    fn len(&self) -> usize {
        self.strips.len()
    }

    /// [`Strips::dot`] for this part's strip `s`.
    ///
    /// # Safety
    /// As [`Strips::dot`].
    unsafe fn dot(&self, s: usize, x: &Q8Rows, out: &mut [[f32; STRIP]]) {
        assert_eq!(x.blocks(), self.blocks, "activations of another width");
        assert_eq!(out.len(), x.rows(), "one output row per activation row");
        let base = &self.data[s * self.strip_bytes..][..self.strip_bytes];
        let mut j0 = 0;
        while j0 < out.len() {
            let n = match out.len() - j0 {
                MAX_N.. => MAX_N,
                8..16 => 8,
                4..8 => 4,
                r => r.min(2),
            };
            let o = &mut out[j0..j0 + n];
            let (blocks, k) = (self.blocks, self.offset);
            // SAFETY: `base` holds the strip's blocks; rows `j0..j0 + n` of `x` exist and have
            // `blocks` blocks (asserted); the CPU features are the caller's promise.
            unsafe {
                match (self.values, self.kind) {
                    (NIB, F16) => strip_dot_n::<NIB, F16>(base, blocks, k, x, j0, o),
                    (NIB, F16S) => strip_dot_n::<NIB, F16S>(base, blocks, k, x, j0, o),
                    (NIB, K1) => strip_dot_n::<NIB, K1>(base, blocks, k, x, j0, o),
                    (NIB5, F16) => strip_dot_n::<NIB5, F16>(base, blocks, k, x, j0, o),
                    (NIB5, F16S) => strip_dot_n::<NIB5, F16S>(base, blocks, k, x, j0, o),
                    (NIB5, K1) => strip_dot_n::<NIB5, K1>(base, blocks, k, x, j0, o),
                    (BYTES, F16S) => strip_dot_n::<BYTES, F16S>(base, blocks, k, x, j0, o),
                    (BYTES, K2) => strip_dot_n::<BYTES, K2>(base, blocks, k, x, j0, o),
                    (v, kind) => unreachable!("no type lays out values {v} with scales {kind}"),
                }
            }
            j0 += n;
        }
    }
}

/// Writes row `r`'s `dw` and `mw` into a strip block's scales as `kind` ([`F16`] or [`F16S`])
/// stores them: vectors of 16 rows' values, `dw` then `mw`; false when f16 would change them.
fn place_scales(scales: &mut [u8], r: usize, dw: f32, mw: f32, kind: u8) -> bool {
    let dh = f16::from_f32(dw);
    if dh.to_f32() != dw {
        return false;
    }
    scales[2 * r..2 * r + 2].copy_from_slice(&dh.to_le_bytes());
    if kind == F16S {
        // `mw` is `k · dw`, made in the kernel.
        return true;
    }
    let mh = f16::from_f32(mw);
    if mh.to_f32() != mw {
        return false;
    }
    scales[2 * STRIP + 2 * r..2 * STRIP + 2 * r + 2].copy_from_slice(&mh.to_le_bytes());
    true
}

/// [`strip_dot`] with `N` for `out.len()` rows (at most [`MAX_N`]).
///
/// # Safety
/// As [`strip_dot`].
unsafe fn strip_dot_n<const VALUES: u8, const KIND: u8>(
    base: &[u8],
    blocks: usize,
    offset: f32,
    x: &Q8Rows,
    j0: usize,
    out: &mut [[f32; STRIP]],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match out.len() {
            MAX_N => strip_dot::<VALUES, KIND, 16>(base, blocks, offset, x, j0, out),
            8 => strip_dot::<VALUES, KIND, 8>(base, blocks, offset, x, j0, out),
            4 => strip_dot::<VALUES, KIND, 4>(base, blocks, offset, x, j0, out),
            2 => strip_dot::<VALUES, KIND, 2>(base, blocks, offset, x, j0, out),
            _ => strip_dot::<VALUES, KIND, 1>(base, blocks, offset, x, j0, out),
        }
    }
}

/// Writes row `r`'s 32 values `u` into a strip block's value vectors as `layout` stores them;
/// see the module docs.
fn place_values(values: &mut [u8], r: usize, u: &[u8; QK], layout: u8) {
    if layout == BYTES {
        for g in 0..8 {
            values[64 * g + 4 * r..64 * g + 4 * r + 4].copy_from_slice(&u[4 * g..4 * g + 4]);
        }
        return;
    }
    for v in 0..4 {
        for t in 0..4 {
            values[64 * v + 4 * r + t] = (u[8 * v + t] & 0x0F) | ((u[8 * v + 4 + t] & 0x0F) << 4);
        }
    }
    if layout == NIB5 {
        // Mask `g`'s bit `4r + t`: the fifth bit of value `4g + t`, which the nibble vectors
        // unpack into byte `4r + t` of vector `g`.
        for g in 0..8 {
            let mask = &mut values[256 + 8 * g..256 + 8 * g + 8];
            for t in 0..4 {
                if u[4 * g + t] & 0x10 != 0 {
                    let bit = 4 * r + t;
                    mask[bit / 8] |= 1 << (bit % 8);
                }
            }
        }
    }
}

/// [`Strips::dot`] for `N` activation rows from `j0`, on the strip whose blocks are `base`.
///
/// # Safety
/// As [`Strips::dot`], which checks the sizes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")]
unsafe fn strip_dot<const VALUES: u8, const KIND: u8, const N: usize>(
    base: &[u8],
    blocks: usize,
    offset: f32,
    x: &Q8Rows,
    j0: usize,
    out: &mut [[f32; STRIP]],
) {
    let block_bytes = scale_bytes(KIND) + value_bytes(VALUES);
    debug_assert_eq!(base.len(), strip_bytes(KIND, blocks, block_bytes));
    let mut acc = [_mm512_setzero_ps(); N];
    // SAFETY: each block of `base` is `block_bytes` long: scales, offsets and 4 or 8 value
    // vectors; rows `j0..j0 + N` of `x` hold `blocks` blocks of 32 bytes.
    unsafe {
        for b in 0..blocks {
            let p = base.as_ptr().add(block_offset(KIND, b, block_bytes));
            // Software prefetch only for full passes of 16 rows: on fewer, the hardware
            // prefetcher alone ran the products of a decode step 11–15 % faster (Q4_1, Q8_0;
            // 1 and 4 rows; `examples/decode_products.rs`), while on 16 it was a toss-up.
            if N == MAX_N {
                _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_BYTES).cast());
            }
            // `dw` and `mw` of the block (`[0]`), and for K2 of its second half (`[1]`).
            let (dw, mw) = match KIND {
                F16 => {
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
                    let mw = _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * STRIP).cast()));
                    ([dw, dw], [mw, mw])
                }
                F16S => {
                    let dw = _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()));
                    let mw = _mm512_mul_ps(dw, _mm512_set1_ps(offset));
                    ([dw, dw], [mw, mw])
                }
                _ => {
                    // The group's `D` and `M` (in L1 after its first block), times each
                    // block's (or half's) 8-bit multipliers.
                    let header = p.sub(b % GROUP * block_bytes + GROUP_HEADER);
                    let (d, m) = (
                        _mm512_loadu_ps(header.cast()),
                        _mm512_loadu_ps(header.add(4 * STRIP).cast()),
                    );
                    let times = |i: usize, v: __m512| {
                        let bytes = _mm_loadu_si128(p.add(STRIP * i).cast());
                        _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)), v)
                    };
                    if KIND == K1 {
                        let (dw, mw) = (times(0, d), times(1, m));
                        ([dw, dw], [mw, mw])
                    } else {
                        ([times(0, d), times(1, d)], [times(2, m), times(3, m)])
                    }
                }
            };
            let vals = p.add(scale_bytes(KIND));
            let mut w = [_mm512_setzero_si512(); 8];
            if VALUES != BYTES {
                let low = _mm512_set1_epi8(0x0F);
                for v in 0..4 {
                    let raw = _mm512_loadu_si512(vals.add(64 * v).cast());
                    w[2 * v] = _mm512_and_si512(raw, low);
                    w[2 * v + 1] = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
                }
                if VALUES == NIB5 {
                    // Each byte's fifth bit from its vector's mask: + 16 where set.
                    let sixteen = _mm512_set1_epi8(0x10);
                    for (g, w) in w.iter_mut().enumerate() {
                        let mask = vals.add(256 + 8 * g).cast::<u64>().read_unaligned();
                        *w = _mm512_mask_add_epi8(*w, mask, *w, sixteen);
                    }
                }
            } else {
                for (g, w) in w.iter_mut().enumerate() {
                    *w = _mm512_loadu_si512(vals.add(64 * g).cast());
                }
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                let row = j0 + j;
                let q = x.qs_at(row, b).cast::<i32>();
                let xb = row * blocks + b;
                let dx = _mm512_set1_ps(*x.d.get_unchecked(xb));
                if KIND == K2 {
                    // Each half's sum on its own scale and offset.
                    let mut dot = [_mm512_setzero_si512(); 2];
                    for (g, w) in w.iter().enumerate() {
                        let group = _mm512_set1_epi32(q.add(g).read_unaligned());
                        dot[g / 4] = _mm512_dpbusd_epi32(dot[g / 4], *w, group);
                    }
                    for h in 0..2 {
                        let scale = _mm512_mul_ps(dw[h], dx);
                        *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[h]), scale, *acc);
                        let ds = *x.ds_halves.get_unchecked(2 * xb + h);
                        *acc = _mm512_fmadd_ps(mw[h], _mm512_set1_ps(ds), *acc);
                    }
                    continue;
                }
                let mut dot = _mm512_setzero_si512();
                for (g, w) in w.iter().enumerate() {
                    let group = _mm512_set1_epi32(q.add(g).read_unaligned());
                    dot = _mm512_dpbusd_epi32(dot, *w, group);
                }
                let scale = _mm512_mul_ps(dw[0], dx);
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, *acc);
                *acc = _mm512_fmadd_ps(mw[0], _mm512_set1_ps(*x.ds.get_unchecked(xb)), *acc);
            }
        }
        for (o, acc) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), acc);
        }
    }
}

#[cfg(test)]
#[path = "quant_strips_tests.rs"]
mod tests;
