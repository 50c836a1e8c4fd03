//! bf16 strips packed losslessly in 12 bits a value, for the products that memory bounds.
//!
//! A decode step of one sequence reads every weight once, so on bf16 weights its speed is the
//! memory bandwidth over 2 bytes a weight (`docs/BENCHMARKS.md`: wayfinder and llama.cpp both
//! at this machine's bandwidth). The bytes are not all information: a bf16 is a sign, an 8-bit
//! exponent and 7 bits of mantissa, and the exponents of a block of trained weights take few
//! values (SmolLM2-135M: 13–20 distinct ones per matrix; the 15 most frequent of each 16-row
//! strip cover all but 1 value in 100 000). So each strip stores:
//!
//! - a table of 16 exponents: entry 0 is exponent 0 (zeros and subnormals), entries 1–15 the
//!   strip's 15 most frequent other exponents, as the bits `E << 7` of a bf16 (32 entries, the
//!   16 twice, for `vpermw`, which indexes with 5 bits);
//! - per value a byte of sign and mantissa (`m << 1 | s`) and a 4-bit code into the table;
//! - the exceptions: values whose exponent is not in the table (their code is 0) with their
//!   bits, patched in after decoding.
//!
//! Decoding is exact: a strip decodes to the bits [`super::bf16_strips`] would hold, so every
//! product gives the same result packed or not. It costs a few instructions per 32 values
//! (widen the bytes, look the codes up with `vpermw`, two shifts and an or): a product on a
//! few rows decodes each pair of vectors in registers as its tiles reach them
//! ([`PackedStrips::cursor`]), one on many rows decodes each strip once into a scratch its
//! tiles then read ([`PackedStrips::decode`]). Per 32 weights a decode step reads 48 bytes from
//! memory instead of 64.
//!
//! Body layout, per pair of strip vectors `2g`, `2g + 1` (a vector: 16 rows × 2 values, the
//! strip layout's 32 lanes): 32 bytes of sign and mantissa of vector `2g`, 32 of vector
//! `2g + 1`, then 32 bytes of codes (lane `i`'s code of vector `2g` in the low nibble of byte
//! `i`, of vector `2g + 1` in the high nibble).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::bf16;

use super::quant_vnni::PREFETCH_BYTES;

/// Lanes of a strip vector: 16 rows × 2 values.
const LANES: usize = 32;

/// Bytes of a strip's exponent table: 32 entries of 16 bits.
const TABLE: usize = 64;

/// Bytes of a pair of vectors: two of sign and mantissa, one of codes.
const GROUP: usize = 3 * LANES;

/// More exceptions than this share of a matrix's values and it stays unpacked: packing is
/// for weights whose exponents cluster, as trained weights' do.
const MAX_EXCEPTIONS_PER_MILLION: usize = 1000;

/// Strips of `LANES · vectors` bf16 values each, packed; see the module docs.
#[derive(Debug)]
pub(crate) struct PackedStrips {
    /// Strip `s` at `s · strip_bytes`: its table, then its groups.
    data: Vec<u8>,
    strip_bytes: usize,
    /// Vectors per strip (the strip layout's `cols / 2` pairs).
    vectors: usize,
    /// `(index in the strip, bits)` of every exception, strip after strip, by index.
    exceptions: Vec<(u32, u16)>,
    /// Strip `s`'s exceptions are `exceptions[starts[s]..starts[s + 1]]`.
    starts: Vec<usize>,
}

impl PackedStrips {
    /// Packs `plain`, `strips` strips of `LANES · vectors` values each in the strip layout;
    /// `None` when its exponents spread too widely for packing to pay.
    pub(crate) fn pack(plain: &[bf16], strips: usize, vectors: usize) -> Option<Self> {
        let per_strip = LANES * vectors;
        assert_eq!(plain.len(), strips * per_strip);
        let strip_bytes = TABLE + vectors.div_ceil(2) * GROUP;
        let mut data = vec![0u8; strips * strip_bytes];
        let (mut exceptions, mut starts) = (Vec::new(), vec![0]);
        for (src, dst) in plain
            .chunks_exact(per_strip)
            .zip(data.chunks_exact_mut(strip_bytes))
        {
            let codes = code_book(src);
            for (e, entry) in codes.table.iter().enumerate() {
                let bits = (u16::from(*entry) << 7).to_le_bytes();
                dst[2 * e..2 * e + 2].copy_from_slice(&bits);
                dst[2 * (e + 16)..2 * (e + 16) + 2].copy_from_slice(&bits);
            }
            for (i, v) in src.iter().enumerate() {
                let bits = v.to_bits();
                let code = codes.code[usize::from((bits >> 7) as u8)];
                if code == 0 && (bits >> 7) as u8 != 0 {
                    exceptions.push((i as u32, bits));
                }
                let (p, lane) = (i / LANES, i % LANES);
                let group = TABLE + p / 2 * GROUP;
                dst[group + p % 2 * LANES + lane] = ((bits & 0x7F) << 1 | bits >> 15) as u8;
                dst[group + 2 * LANES + lane] |= code << (4 * (p % 2));
            }
            starts.push(exceptions.len());
        }
        if exceptions.len() * 1_000_000 > plain.len() * MAX_EXCEPTIONS_PER_MILLION {
            return None;
        }
        Some(Self {
            data,
            strip_bytes,
            vectors,
            exceptions,
            starts,
        })
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.data.len() + self.exceptions.len() * std::mem::size_of::<(u32, u16)>()
    }

    /// Value `i` of strip `s` (in the strip layout), decoded one at a time.
    pub(crate) fn value(&self, s: usize, i: usize) -> bf16 {
        let strip = &self.data[s * self.strip_bytes..][..self.strip_bytes];
        let (p, lane) = (i / LANES, i % LANES);
        let group = TABLE + p / 2 * GROUP;
        let sm = u16::from(strip[group + p % 2 * LANES + lane]);
        let code = usize::from(strip[group + 2 * LANES + lane] >> (4 * (p % 2)) & 0x0F);
        let exponent = u16::from_le_bytes([strip[2 * code], strip[2 * code + 1]]);
        let exceptions = &self.exceptions[self.starts[s]..self.starts[s + 1]];
        let bits = match exceptions.binary_search_by_key(&(i as u32), |&(at, _)| at) {
            Ok(k) => exceptions[k].1,
            Err(_) => sm >> 1 | (sm & 1) << 15 | exponent,
        };
        bf16::from_bits(bits)
    }

    /// Strip `s` decoded into `out` (`LANES · vectors` values, the strip layout).
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn decode(&self, s: usize, out: &mut [bf16]) {
        assert_eq!(out.len(), LANES * self.vectors);
        let dst = out.as_mut_ptr().cast::<u16>();
        // SAFETY: the cursor reads the strip's groups in order; stores go to vectors
        // `< vectors` of `out`, which holds them all; the caller vouches for the CPU.
        unsafe {
            let mut cursor = self.cursor(s);
            for g in 0..self.vectors.div_ceil(2) {
                let (a, b) = cursor.group(g);
                _mm512_storeu_si512(dst.add(2 * g * LANES).cast(), a);
                if 2 * g + 1 < self.vectors {
                    _mm512_storeu_si512(dst.add((2 * g + 1) * LANES).cast(), b);
                }
            }
        }
    }
}

/// Reads one packed strip's vectors in order, two at a time, for a product that decodes as it
/// goes ([`PackedStrips::cursor`]).
pub(crate) struct StripCursor<'a> {
    strip: *const u8,
    table: __m512i,
    /// The strip's exceptions not yet patched in.
    exceptions: &'a [(u32, u16)],
}

impl PackedStrips {
    /// A cursor at the start of strip `s`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn cursor(&self, s: usize) -> StripCursor<'_> {
        let strip = &self.data[s * self.strip_bytes..][..self.strip_bytes];
        StripCursor {
            strip: strip.as_ptr(),
            // SAFETY: every strip starts with its 64-byte table; the caller vouches for the
            // CPU.
            table: unsafe { _mm512_loadu_si512(strip.as_ptr().cast()) },
            exceptions: &self.exceptions[self.starts[s]..self.starts[s + 1]],
        }
    }
}

impl StripCursor<'_> {
    /// Vectors `2g` and `2g + 1` of the strip, decoded (as `vdpbf16ps` operands: 16 rows × 2
    /// values); groups must be read in order, each once.
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW; `g` must be a group of the strip (`2g < vectors`).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl")]
    pub(crate) unsafe fn group(&mut self, g: usize) -> (__m512i, __m512i) {
        let at = TABLE + g * GROUP;
        // SAFETY: group `g` lies inside the strip (the caller); prefetches never fault.
        unsafe {
            let ahead = self.strip.wrapping_add(at + PREFETCH_BYTES);
            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(GROUP - 1).cast());
            // (Macros, not closures: see `decode`.)
            macro_rules! widen {
                ($at:expr) => {
                    _mm512_cvtepu8_epi16(_mm256_loadu_si256(self.strip.add($at).cast()))
                };
            }
            macro_rules! join {
                ($sm:expr, $exponent:expr) => {{
                    let sm = $sm;
                    let (m, sign) = (_mm512_srli_epi16::<1>(sm), _mm512_slli_epi16::<15>(sm));
                    _mm512_ternarylogic_epi32::<0xFE>(m, sign, $exponent)
                }};
            }
            let codes = widen!(at + 2 * LANES);
            let low = _mm512_permutexvar_epi16(codes, self.table);
            let high = _mm512_permutexvar_epi16(_mm512_srli_epi16::<4>(codes), self.table);
            let mut v = [join!(widen!(at), low), join!(widen!(at + LANES), high)];
            let end = (2 * g + 2) * LANES;
            while let Some((&(i, bits), rest)) = self.exceptions.split_first() {
                let i = i as usize;
                if i >= end {
                    break;
                }
                let (k, lane) = (i / LANES % 2, i % LANES);
                v[k] = _mm512_mask_set1_epi16(v[k], 1 << lane, bits as i16);
                self.exceptions = rest;
            }
            (v[0], v[1])
        }
    }
}

/// A strip's exponent table and the code of every exponent (0 for exponent 0 and for those
/// not in the table).
struct CodeBook {
    table: [u8; 16],
    code: [u8; 256],
}

/// Entry 0 exponent 0, entries 1–15 the 15 most frequent other exponents of `values` (ties
/// to the larger exponent, so the book does not depend on anything but the values).
fn code_book(values: &[bf16]) -> CodeBook {
    let mut count = [0usize; 256];
    for v in values {
        count[usize::from((v.to_bits() >> 7) as u8)] += 1;
    }
    let mut exponents: Vec<u8> = (1..=255u8).filter(|&e| count[usize::from(e)] > 0).collect();
    exponents.sort_by_key(|&e| {
        (
            std::cmp::Reverse(count[usize::from(e)]),
            std::cmp::Reverse(e),
        )
    });
    let mut book = CodeBook {
        table: [0; 16],
        code: [0; 256],
    };
    for (c, &e) in exponents.iter().take(15).enumerate() {
        book.table[c + 1] = e;
        book.code[usize::from(e)] = c as u8 + 1;
    }
    book
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values of every kind — zeros of both signs, subnormals, infinities, a NaN, and more
    /// than 15 exponents in a strip, so that some are exceptions — decode to their own bits,
    /// one at a time and strip by strip, with an odd number of vectors.
    #[test]
    fn packed_strips_decode_to_the_same_bits() {
        if !super::super::linear_avx512::has_bf16_dot() {
            return;
        }
        let (strips, vectors) = (8, 41);
        let mut s = 0x9E37_79B9u32;
        let mut values: Vec<bf16> = (0..strips * vectors * LANES)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                bf16::from_f32(((s % 2001) as f32 / 1000.0 - 1.0) * 0.02)
            })
            .collect();
        // In the first strip, besides the ~11 exponents of the values above: zeros,
        // subnormals, infinities and a NaN (exponent 255), and eight more exponents.
        let special = [
            0.0,
            -0.0,
            1e-40,
            -3e-39,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ]
        .into_iter()
        .chain([10, -20, 30, -24, 40, -28, -32, 50].map(|e| 1.5 * 2f32.powi(e)));
        for (k, v) in special.enumerate() {
            values[k * 37 + 5] = bf16::from_f32(v);
        }
        let packed = PackedStrips::pack(&values, strips, vectors).expect("within the limit");
        assert!(!packed.exceptions.is_empty(), "the test wants exceptions");
        let mut out = vec![bf16::ZERO; vectors * LANES];
        for (st, want) in values.chunks_exact(vectors * LANES).enumerate() {
            // SAFETY: checked `has_bf16_dot` (AVX-512BW with it).
            unsafe { packed.decode(st, &mut out) };
            for (i, (g, w)) in out.iter().zip(want).enumerate() {
                assert_eq!(g.to_bits(), w.to_bits(), "strip {st} value {i}");
                assert_eq!(
                    packed.value(st, i).to_bits(),
                    w.to_bits(),
                    "strip {st} value {i}"
                );
            }
        }
        assert!(packed.size_in_bytes() < values.len() * 2 * 4 / 5);
    }

    /// Weights whose exponents spread over the whole range stay unpacked.
    #[test]
    fn widely_spread_exponents_are_not_packed() {
        let values: Vec<bf16> = (0..4 * LANES * 8)
            .map(|i| bf16::from_bits((i as u16).wrapping_mul(40_503)))
            .collect();
        assert!(PackedStrips::pack(&values, 4, 8).is_none());
    }
}
