//! Activations quantized to 8 bits per 32-value block, as llama.cpp's Q8_0/Q8_1 do: what the
//! integer kernels (`quant_vnni.rs`, `kquant_vnni.rs`, `quant_strips.rs`) multiply the weights
//! with. Plain Rust: quantizing is a small part of a product (one pass over the activations).

#![cfg(target_arch = "x86_64")]

/// Values per block.
pub(crate) const QK: usize = 32;

/// Rows of activations quantized to 8 bits per 32-value block.
#[derive(Debug)]
pub(crate) struct Q8Rows {
    pub(crate) cols: usize,
    /// `[m, cols]` quantized values.
    pub(crate) qs: Vec<i8>,
    /// `[m, cols / 32]` scales `d`.
    pub(crate) d: Vec<f32>,
    /// `[m, cols / 32]` `d · Σq`.
    pub(crate) ds: Vec<f32>,
    /// `[m, cols / 32, 2]` `d · Σq` over each half (16 values) of a block: the offset term of
    /// strips whose scale changes every 16 values (Q6_K).
    pub(crate) ds_halves: Vec<f32>,
    /// Per row and block pair, 16 lanes: `d` of the first block ×8, of the second ×8 (the
    /// lanes of a `vpdpbusd` over the pair).
    pub(crate) d_lanes: Vec<f32>,
    /// The same layout of `d · Σq` over each lane's 4 values (a block's 8 lanes add up to its
    /// `d · Σq`): the offset term per lane, so that formats whose scale changes within a
    /// 32-value block (Q6_K: every 16) work too.
    pub(crate) ds_lanes: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `m` rows of `cols` (a multiple of 32) values, without the lanes the row
    /// kernels read ([`Self::with_lanes`]).
    pub(crate) fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(QK) && x.len() == m * cols);
        let mut rows = Self::zeros(m, cols);
        let vector = vector_available();
        for (b, block) in x.chunks_exact(QK).enumerate() {
            rows.set_block(b, block, vector);
        }
        rows
    }

    fn zeros(m: usize, cols: usize) -> Self {
        let nb = m * cols / QK;
        Self {
            cols,
            qs: vec![0; m * cols],
            d: vec![0.0; nb],
            ds: vec![0.0; nb],
            ds_halves: vec![0.0; 2 * nb],
            d_lanes: Vec::new(),
            ds_lanes: Vec::new(),
        }
    }

    /// Quantizes `block` into block `b` (counted over all rows).
    fn set_block(&mut self, b: usize, block: &[f32], vector: bool) {
        let q = &mut self.qs[b * QK..(b + 1) * QK];
        let (d, [lo, hi]) = if vector {
            // SAFETY: `vector` is `vector_available()`; both slices hold 32 values.
            unsafe { quantize_block_avx512(block, q) }
        } else {
            quantize_block(block, q)
        };
        self.d[b] = d;
        self.ds[b] = d * (lo + hi) as f32;
        self.ds_halves[2 * b] = d * lo as f32;
        self.ds_halves[2 * b + 1] = d * hi as f32;
    }

    /// Adds the per-lane scales the row kernels read (`d_lanes`, `ds_lanes`); the strips
    /// (`quant_strips.rs`) need only `d` and `ds`.
    pub(crate) fn with_lanes(mut self) -> Self {
        if self.has_lanes() {
            return self;
        }
        let m = self.rows();
        let per_row = self.cols / QK;
        let pairs = per_row / 2;
        self.d_lanes = Vec::with_capacity(m * pairs * 16);
        self.ds_lanes = Vec::with_capacity(m * pairs * 16);
        for r in 0..m {
            for p in 0..pairs {
                let b = r * per_row + 2 * p;
                for k in 0..16 {
                    let block = b + k / 8;
                    let start = block * QK + (k % 8) * 4;
                    let lane_sum: i32 = self.qs[start..start + 4]
                        .iter()
                        .map(|&q| i32::from(q))
                        .sum();
                    self.d_lanes.push(self.d[block]);
                    self.ds_lanes.push(self.d[block] * lane_sum as f32);
                }
            }
        }
        self
    }

    /// Whether [`Self::with_lanes`] has run (or there is nothing to add lanes for).
    pub(crate) fn has_lanes(&self) -> bool {
        self.qs.is_empty() || self.cols < 2 * QK || !self.d_lanes.is_empty()
    }

    /// Quantizes `m` rows in two levels: row `2i` is row `i` to 8 bits, row `2i + 1` what
    /// that rounding left out, to 8 bits again; their products add up to the product with row
    /// `i` within about 1/30 000 of its size, where one level is within about 1/250.
    pub(crate) fn quantize_two_levels(x: &[f32], m: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(QK) && x.len() == m * cols);
        let mut rows = Self::zeros(2 * m, cols);
        let vector = vector_available();
        let per_row = cols / QK;
        for (i, row) in x.chunks_exact(cols).enumerate() {
            for (k, block) in row.chunks_exact(QK).enumerate() {
                let b = 2 * i * per_row + k;
                rows.set_block(b, block, vector);
                let (d, q) = (rows.d[b], &rows.qs[b * QK..(b + 1) * QK]);
                let residual: [f32; QK] = std::array::from_fn(|t| block[t] - d * f32::from(q[t]));
                rows.set_block(b + per_row, &residual, vector);
            }
        }
        rows
    }

    /// Rows held.
    pub(crate) fn rows(&self) -> usize {
        self.qs.len() / self.cols
    }

    /// The values the quantized rows stand for, `d · q` (what the kernels multiply).
    #[cfg(test)]
    pub(crate) fn dequantized(&self) -> Vec<f32> {
        self.qs
            .chunks_exact(QK)
            .zip(&self.d)
            .flat_map(|(q, &d)| q.iter().map(move |&v| d * f32::from(v)))
            .collect()
    }

    /// The quantized values of block `b` (counted over all rows) onward.
    pub(crate) fn qs_at(&self, row: usize, block: usize) -> *const i8 {
        self.qs[row * self.cols + block * QK..].as_ptr()
    }

    pub(crate) fn blocks(&self) -> usize {
        self.cols / QK
    }
}

/// Quantizes one block: `q = round(x / d)` with `d = max|x| / 127`; returns `d` and `Σq` over
/// each half of the block.
fn quantize_block(block: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sums = [0i32; 2];
    for (i, (qi, &v)) in q.iter_mut().zip(block).enumerate() {
        // Half away from zero, without a call to `roundf` (|r| <= 127, so no overflow).
        let r = v * inv;
        let r = (r + 0.5f32.copysign(r)) as i8;
        *qi = r;
        sums[i / 16] += i32::from(r);
    }
    (d, sums)
}

/// Whether [`quantize_block_avx512`] runs here.
fn vector_available() -> bool {
    is_x86_feature_detected!("avx512f")
}

/// [`quantize_block`] with AVX-512, bit for bit: the same operations in the same order on 16
/// lanes (a maximum is exact whatever the order).
///
/// # Safety
/// The CPU must have AVX-512 F; `block` and `q` must hold 32 values.
#[target_feature(enable = "avx512f")]
unsafe fn quantize_block_avx512(block: &[f32], q: &mut [i8]) -> (f32, [i32; 2]) {
    use std::arch::x86_64::*;
    assert!(block.len() >= QK && q.len() >= QK, "a block is 32 values");
    // SAFETY: both slices hold 32 values (asserted); the CPU is the caller's promise.
    unsafe {
        let lo = _mm512_loadu_ps(block.as_ptr());
        let hi = _mm512_loadu_ps(block.as_ptr().add(16));
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(lo), _mm512_abs_ps(hi)));
        let d = amax / 127.0;
        let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let sign = _mm512_set1_epi32(i32::MIN);
        let half = _mm512_castps_si512(_mm512_set1_ps(0.5));
        let round = |v: __m512| {
            let r = _mm512_mul_ps(v, inv);
            let h = _mm512_or_si512(half, _mm512_and_si512(_mm512_castps_si512(r), sign));
            _mm512_cvttps_epi32(_mm512_add_ps(r, _mm512_castsi512_ps(h)))
        };
        let (qlo, qhi) = (round(lo), round(hi));
        _mm_storeu_si128(q.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(qlo));
        _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(qhi));
        (
            d,
            [_mm512_reduce_add_epi32(qlo), _mm512_reduce_add_epi32(qhi)],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector quantization gives the scalar one's bytes, scales and sums, on blocks of
    /// every sign and size, a block of zeros and values on the rounding's halfway points.
    #[test]
    fn vector_blocks_match_the_scalar_ones_bit_for_bit() {
        if !vector_available() {
            return;
        }
        let mut s = 0x9E37_79B9u32;
        let mut blocks: Vec<[f32; QK]> = (0..200)
            .map(|i| {
                std::array::from_fn(|_| {
                    s ^= s << 13;
                    s ^= s >> 17;
                    s ^= s << 5;
                    ((s % 20_001) as f32 / 10_000.0 - 1.0) * 10f32.powi(i % 5 - 2)
                })
            })
            .collect();
        blocks.push([0.0; QK]);
        blocks.push(std::array::from_fn(|t| t as f32 - 15.5));
        blocks.push(std::array::from_fn(|t| {
            if t == 3 { -127.0 } else { (t as f32) * 0.5 }
        }));
        for block in &blocks {
            let (mut a, mut b) = ([0i8; QK], [0i8; QK]);
            let scalar = quantize_block(block, &mut a);
            // SAFETY: checked `vector_available`; both hold 32 values.
            let vector = unsafe { quantize_block_avx512(block, &mut b) };
            assert_eq!(a, b, "{block:?}");
            assert_eq!(scalar.0.to_bits(), vector.0.to_bits());
            assert_eq!(scalar.1, vector.1);
        }
    }
}
