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
    /// Per row and block pair, 16 lanes: `d` of the first block ×8, of the second ×8 (the
    /// lanes of a `vpdpbusd` over the pair).
    pub(crate) d_lanes: Vec<f32>,
    /// The same layout of `d · Σq` over each lane's 4 values (a block's 8 lanes add up to its
    /// `d · Σq`): the offset term per lane, so that formats whose scale changes within a
    /// 32-value block (Q6_K: every 16) work too.
    pub(crate) ds_lanes: Vec<f32>,
}

impl Q8Rows {
    /// Quantizes `m` rows of `cols` (a multiple of 32) values.
    pub(crate) fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(QK) && x.len() == m * cols);
        let nb = m * cols / QK;
        let mut rows = Self {
            cols,
            qs: vec![0; m * cols],
            d: vec![0.0; nb],
            ds: vec![0.0; nb],
            d_lanes: Vec::new(),
            ds_lanes: Vec::new(),
        };
        for (b, (block, q)) in x
            .chunks_exact(QK)
            .zip(rows.qs.chunks_exact_mut(QK))
            .enumerate()
        {
            let (d, sum) = quantize_block(block, q);
            rows.d[b] = d;
            rows.ds[b] = d * sum as f32;
        }
        let per_row = cols / QK;
        let pairs = per_row / 2;
        rows.d_lanes = Vec::with_capacity(m * pairs * 16);
        rows.ds_lanes = Vec::with_capacity(m * pairs * 16);
        for r in 0..m {
            for p in 0..pairs {
                let b = r * per_row + 2 * p;
                for k in 0..16 {
                    let block = b + k / 8;
                    let start = block * QK + (k % 8) * 4;
                    let lane_sum: i32 = rows.qs[start..start + 4]
                        .iter()
                        .map(|&q| i32::from(q))
                        .sum();
                    rows.d_lanes.push(rows.d[block]);
                    rows.ds_lanes.push(rows.d[block] * lane_sum as f32);
                }
            }
        }
        rows
    }

    /// Quantizes `m` rows in two levels: row `2i` is row `i` to 8 bits, row `2i + 1` what
    /// that rounding left out, to 8 bits again; their products add up to the product with row
    /// `i` within about 1/30 000 of its size, where one level is within about 1/250.
    pub(crate) fn quantize_two_levels(x: &[f32], m: usize, cols: usize) -> Self {
        let mut both = Vec::with_capacity(2 * m * cols);
        let mut q = [0i8; QK];
        for row in x.chunks_exact(cols) {
            let start = both.len();
            both.extend_from_slice(row);
            let mut residual = Vec::with_capacity(cols);
            for block in row.chunks_exact(QK) {
                let (d, _) = quantize_block(block, &mut q);
                residual.extend(block.iter().zip(&q).map(|(&v, &qi)| v - d * f32::from(qi)));
            }
            debug_assert_eq!(both.len() - start, cols);
            both.extend(residual);
        }
        Self::quantize(&both, 2 * m, cols)
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

/// Quantizes one block: `q = round(x / d)` with `d = max|x| / 127`; returns `d` and `Σq`.
fn quantize_block(block: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &v) in q.iter_mut().zip(block) {
        // Half away from zero, without a call to `roundf` (|r| <= 127, so no overflow).
        let r = v * inv;
        let r = (r + 0.5f32.copysign(r)) as i8;
        *qi = r;
        sum += i32::from(r);
    }
    (d, sum)
}
