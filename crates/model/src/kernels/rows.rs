//! Which rows of a step's activations take which product on quantized weights.
//!
//! A product on block-quantized weights can go two ways: the activations rounded to 8 bits and
//! multiplied in integers, or kept in f32 against dequantized weights. Which way a token's row
//! goes is decided by what the token is, never by how many rows share its step: generated
//! tokens take 8 bits; prompt tokens take 8 bits too by default (on strips a 512-token Q4_1
//! prefill ran 1.9× faster than in f32 gemm), or f32 when the decoder is told to
//! (`WAYFINDER_F32_PROMPTS=1`, for measuring what 8-bit activations cost in fidelity).
//!
//! On the integer path each row's sums run in the same order whatever rows share the product,
//! so a prompt computes bit for bit alike whether the prefix cache supplied most of it (a short
//! suffix) or not (the whole prompt in one step). The f32 path does not promise that: gemm's
//! blocking, and with it the order of a row's sums, depends on the number of rows.

use wayfinder_core::Batch;

/// The kind of every row of a step's activations; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowKinds {
    /// Whether each row is a generated token's.
    generated_row: Vec<bool>,
    /// Rows of generated tokens, ascending.
    generated: Vec<usize>,
    /// Rows of prompt tokens, ascending.
    prompt: Vec<usize>,
}

impl RowKinds {
    /// The kinds of a batch's tokens, in batch order ([`Batch::is_generated`]); with
    /// `integer_prompts` prompt tokens count as generated too (every row on 8-bit activations,
    /// for measuring what that costs).
    pub fn from_batch(batch: &Batch, integer_prompts: bool) -> Self {
        let mut generated_row = vec![integer_prompts; batch.num_tokens()];
        for seq in &batch.seqs {
            for i in seq.tokens.clone() {
                generated_row[i] |= batch.is_generated(seq, i);
            }
        }
        Self::from_flags(generated_row)
    }

    /// `m` rows, all generated tokens' (`generated`) or all prompt tokens'.
    pub fn uniform(m: usize, generated: bool) -> Self {
        Self::from_flags(vec![generated; m])
    }

    /// Whether each row is a generated token's.
    pub fn from_flags(generated_row: Vec<bool>) -> Self {
        let (mut generated, mut prompt) = (Vec::new(), Vec::new());
        for (i, &g) in generated_row.iter().enumerate() {
            if g { &mut generated } else { &mut prompt }.push(i);
        }
        Self {
            generated_row,
            generated,
            prompt,
        }
    }

    /// The kinds of `rows` (indices into these rows), in that order.
    ///
    /// # Panics
    /// If a row is out of range.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self::from_flags(rows.iter().map(|&r| self.generated_row[r]).collect())
    }

    /// Rows in all.
    pub fn len(&self) -> usize {
        self.generated_row.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.generated_row.is_empty()
    }

    /// Rows of generated tokens, ascending.
    pub fn generated(&self) -> &[usize] {
        &self.generated
    }

    /// Rows of prompt tokens, ascending.
    pub fn prompt(&self) -> &[usize] {
        &self.prompt
    }
}

/// The `rows` of `x` (rows of `cols` values), one after another.
pub(super) fn gather(x: &[f32], rows: &[usize], cols: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows.len() * cols);
    for &r in rows {
        out.extend_from_slice(&x[r * cols..(r + 1) * cols]);
    }
    out
}

/// Writes row `i` of `src` to row `rows[i]` of `dst` (rows of `cols` values).
pub(super) fn scatter(src: &[f32], rows: &[usize], cols: usize, dst: &mut [f32]) {
    for (s, &r) in src.chunks_exact(cols).zip(rows) {
        dst[r * cols..(r + 1) * cols].copy_from_slice(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_split_and_select_rows() {
        let k = RowKinds::from_flags(vec![false, true, false, true, true]);
        assert_eq!(k.generated(), &[1, 3, 4]);
        assert_eq!(k.prompt(), &[0, 2]);
        let s = k.select(&[4, 0]);
        assert_eq!((s.generated(), s.prompt()), (&[0][..], &[1][..]));
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        let g = gather(&x, k.generated(), 2);
        assert_eq!(g, [2.0, 3.0, 6.0, 7.0, 8.0, 9.0]);
        let mut back = vec![0f32; 10];
        scatter(&g, k.generated(), 2, &mut back);
        assert_eq!(back, [0.0, 0.0, 2.0, 3.0, 0.0, 0.0, 6.0, 7.0, 8.0, 9.0]);
    }
}
