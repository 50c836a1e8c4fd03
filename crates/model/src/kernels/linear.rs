//! Linear layers: `y = x · Wᵀ + b` over a whole step's tokens at once.
//!
//! Weights stay in the checkpoint's layout (`[out, in]`, row-major) and in the dtype chosen at
//! load time (f32, bf16 or f16); activations are f32. The kernel depends on the number of rows
//! `m` of `x` (thresholds measured, see `docs/BENCHMARKS.md`):
//!
//! - **few rows** (decode steps, `m <= SMALL_M`): the weight matrix is streamed once from memory,
//!   with software prefetch, through a 4×4 register-tiled kernel (`linear_avx512.rs`; a
//!   portable dot-product loop elsewhere) that widens bf16/f16 to f32 in registers. This is
//!   memory-bound, so bf16/f16 weights nearly halve its time against f32.
//! - **bf16 weights on CPUs with AVX-512 BF16**, any number of rows (where the columns are
//!   even): inputs rounded to bf16 once, products with `vdpbf16ps` on the weights repacked
//!   at load in strips of 16 rows, which replace the rows (`bf16_strips.rs`), held packed
//!   losslessly in 12 bits a value (`bf16_pack.rs`). Against the kernels below on
//!   SmolLM2-135M BF16 (2 threads, alternating): a 512-token prefill ~960 against ~640 tok/s
//!   (gemm on widened tiles), decode 90 against 66-70 tok/s at one sequence and 580-650
//!   against 375-385 at 16 (the widening streaming kernel).
//! - **many rows** (prefill chunks): the `gemm` crate's f32 kernels, each team member on its own
//!   block of output features. Half-precision weights are widened tile by tile into the
//!   member's scratch first; against `2·m` flops per weight that conversion is noise.
//!
//! Every kernel splits its work over the executor's [`Team`].

use half::{bf16, f16};

use super::products::{SMALL_M, gemm_xwt, member_rows};
use super::quant::QuantMatrix;
use super::rows::{RowKinds, gather, scatter};
use super::simd::dispatch;
use super::simd::{Element, Isa, dot};
use super::team::{SendPtr, Team};

/// Weight rows per parallel task in the streaming kernel (measured: 64 beats an even split of
/// a few tasks per thread).
const ROWS_PER_TASK: usize = 64;

/// Weight rows widened per tile for gemm (per member).
const TILE_ROWS: usize = 1024;

/// A weight matrix in its storage dtype.
#[derive(Debug, Clone)]
pub enum WeightData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// bfloat16.
    Bf16(Vec<bf16>),
    /// IEEE half.
    F16(Vec<f16>),
    /// ggml blocks, usually in a GGUF file's memory map.
    Quant(QuantMatrix),
}

impl WeightData {
    fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::Bf16(v) => v.len(),
            Self::F16(v) => v.len(),
            Self::Quant(q) => q.rows() * q.cols(),
        }
    }

    /// Row `r` of a matrix with `cols` columns, widened to f32.
    pub fn row_f32(&self, r: usize, cols: usize, out: &mut [f32]) {
        let range = r * cols..(r + 1) * cols;
        match self {
            Self::F32(v) => out.copy_from_slice(&v[range]),
            Self::Bf16(v) => widen(&v[range], out),
            Self::F16(v) => widen(&v[range], out),
            Self::Quant(q) => q.dequantize_row(r, out),
        }
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::Bf16(v) => v.len() * 2,
            Self::F16(v) => v.len() * 2,
            Self::Quant(q) => q.size_in_bytes(),
        }
    }
}

/// Element types with an AVX-512 kernel.
#[cfg(target_arch = "x86_64")]
pub(crate) trait Wide: super::linear_avx512::WideLoad {}
#[cfg(target_arch = "x86_64")]
impl<T: super::linear_avx512::WideLoad> Wide for T {}
/// Element types with an AVX-512 kernel (none off x86-64).
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Wide {}
#[cfg(not(target_arch = "x86_64"))]
impl<T> Wide for T {}

#[inline(always)]
fn widen<E: Element>(src: &[E], dst: &mut [f32]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

/// A linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Stored,
    rows: usize,
    cols: usize,
    bias: Option<Vec<f32>>,
    isa: Isa,
}

/// How a layer holds its weights.
#[derive(Debug, Clone)]
enum Stored {
    /// As given.
    Plain(WeightData),
    /// bf16 weights repacked in strips, in place of the rows as given, where the CPU has bf16
    /// dot products (`bf16_strips.rs`): every product takes them, so the rows are not kept.
    #[cfg(target_arch = "x86_64")]
    Bf16Strips(std::sync::Arc<super::bf16_strips::Bf16Strips>),
}

impl Linear {
    /// A layer with `weight` of shape `[rows, cols]` (out × in) and an optional bias of `rows`.
    ///
    /// # Panics
    /// If the sizes disagree.
    pub fn new(weight: WeightData, rows: usize, cols: usize, bias: Option<Vec<f32>>) -> Self {
        assert_eq!(weight.len(), rows * cols, "weight is not [{rows}, {cols}]");
        if let Some(b) = &bias {
            assert_eq!(b.len(), rows, "bias is not [{rows}]");
        }
        let weight = match weight {
            #[cfg(target_arch = "x86_64")]
            WeightData::Bf16(w)
                if super::linear_avx512::has_bf16_dot() && cols.is_multiple_of(2) =>
            {
                Stored::Bf16Strips(std::sync::Arc::new(super::bf16_strips::Bf16Strips::new(
                    &w, rows, cols,
                )))
            }
            w => Stored::Plain(w),
        };
        Self {
            weight,
            rows,
            cols,
            bias,
            isa: Isa::detect(),
        }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn in_features(&self) -> usize {
        self.cols
    }
    /// Row `r` of the weights (an embedding table's row), widened to f32 into `out`.
    ///
    /// # Panics
    /// If `r` is not a row or `out` is not `in_features` long.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows, "row {r} of {}", self.rows);
        assert_eq!(out.len(), self.cols, "a row is {} long", self.cols);
        match &self.weight {
            Stored::Plain(w) => w.row_f32(r, self.cols, out),
            #[cfg(target_arch = "x86_64")]
            Stored::Bf16Strips(s) => s.row_f32(r, out),
        }
    }

    /// Bytes the weights take.
    pub fn size_in_bytes(&self) -> usize {
        match &self.weight {
            Stored::Plain(w) => w.size_in_bytes(),
            #[cfg(target_arch = "x86_64")]
            Stored::Bf16Strips(s) => s.size_in_bytes(),
        }
    }

    /// `y[m, out] = x[m, in] · Wᵀ + b`, computed by `team`.
    ///
    /// # Panics
    /// If `x` or `y` are not `m` whole rows.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team) {
        assert_eq!(x.len(), m * self.cols, "input is not [{m}, {}]", self.cols);
        assert_eq!(y.len(), m * self.rows, "output is not [{m}, {}]", self.rows);
        if m == 0 {
            return;
        }
        match &self.weight {
            Stored::Plain(WeightData::Quant(q)) => q.forward(x, m, y, team, self.isa),
            #[cfg(target_arch = "x86_64")]
            Stored::Bf16Strips(s) => self.bf16_strips(s, x, m, y, team),
            Stored::Plain(w) if m <= SMALL_M => match w {
                WeightData::F32(w) => self.streaming(w, x, m, y, team),
                WeightData::Bf16(w) => self.streaming(w, x, m, y, team),
                WeightData::F16(w) => self.streaming(w, x, m, y, team),
                WeightData::Quant(_) => unreachable!("matched above"),
            },
            Stored::Plain(w) => self.packed(w, x, m, y, team),
        }
        self.add_bias(y);
    }

    /// `forward` over rows of the kinds `kinds` (see `rows.rs`): on quantized weights, rows
    /// of the generated kind take 8-bit activations and rows of the prompt kind f32, each kind
    /// in one product (the decoder counts prompt tokens as generated unless told to keep them
    /// in f32); other weights treat every row alike.
    ///
    /// # Panics
    /// If `x` or `y` are not `kinds.len()` whole rows.
    pub fn forward_rows(&self, x: &[f32], kinds: &RowKinds, y: &mut [f32], team: &Team) {
        let m = kinds.len();
        let Stored::Plain(WeightData::Quant(q)) = &self.weight else {
            return self.forward(x, m, y, team);
        };
        assert_eq!(x.len(), m * self.cols, "input is not [{m}, {}]", self.cols);
        assert_eq!(y.len(), m * self.rows, "output is not [{m}, {}]", self.rows);
        let (generated, prompt) = (kinds.generated(), kinds.prompt());
        if prompt.is_empty() {
            q.forward_generated(x, m, y, team, self.isa);
        } else if generated.is_empty() {
            q.forward_prompt(x, m, y, team, self.isa);
        } else {
            let mut part = |rows: &[usize], generated: bool| {
                let xs = gather(x, rows, self.cols);
                let mut ys = vec![0f32; rows.len() * self.rows];
                if generated {
                    q.forward_generated(&xs, rows.len(), &mut ys, team, self.isa);
                } else {
                    q.forward_prompt(&xs, rows.len(), &mut ys, team, self.isa);
                }
                scatter(&ys, rows, self.rows, y);
            };
            part(generated, true);
            part(prompt, false);
        }
        self.add_bias(y);
    }

    fn add_bias(&self, y: &mut [f32]) {
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.rows) {
                for (v, bi) in row.iter_mut().zip(b) {
                    *v += bi;
                }
            }
        }
    }

    /// The streaming kernel: each task computes `ROWS_PER_TASK` outputs for every input row.
    fn streaming<E: Element + Wide>(
        &self,
        w: &[E],
        x: &[f32],
        m: usize,
        y: &mut [f32],
        team: &Team,
    ) {
        let (rows, cols, isa) = (self.rows, self.cols, self.isa);
        // Outputs transposed ([rows, m]) so that each task owns a contiguous range.
        let mut yt = vec![0f32; rows * m];
        team.chunks(&mut yt, ROWS_PER_TASK * m, &|task, out| {
            let first = task * ROWS_PER_TASK;
            #[cfg(target_arch = "x86_64")]
            if isa == Isa::Avx512 {
                let n = out.len() / m;
                let wt = &w[first * cols..(first + n) * cols];
                // SAFETY: `Isa::detect` found AVX-512F/BW/VL on this CPU.
                unsafe { super::linear_avx512::rows_times_inputs(wt, cols, x, m, out) };
                return;
            }
            dispatch!(isa, || {
                for (r, o) in out.chunks_exact_mut(m).enumerate() {
                    let row = &w[(first + r) * cols..(first + r + 1) * cols];
                    for (i, oi) in o.iter_mut().enumerate() {
                        *oi = dot(&x[i * cols..(i + 1) * cols], row);
                    }
                }
            });
        });
        for (r, o) in yt.chunks_exact(m).enumerate() {
            for (i, &v) in o.iter().enumerate() {
                y[i * rows + r] = v;
            }
        }
    }

    /// Any number of rows on bf16 strips: the inputs rounded to bf16 once, each member on its
    /// own strips.
    #[cfg(target_arch = "x86_64")]
    fn bf16_strips(
        &self,
        strips: &super::bf16_strips::Bf16Strips,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        team: &Team,
    ) {
        assert_eq!(y.len(), m * self.rows);
        // SAFETY: strips are made only where `has_bf16_dot` held.
        let xb = unsafe { super::linear_avx512::to_bf16(x) };
        // Ranges of strips claimed as members come free, largest first: halves fixed in
        // advance left one member spinning for ~14 % of a batch-1 step while the other
        // finished (`perf`).
        let out = SendPtr(y.as_mut_ptr());
        team.ranges(strips.len(), &|range| {
            let out = &out;
            // SAFETY: as above; ranges cover disjoint strips, so disjoint output columns of `y`
            // (`m * rows` long, asserted).
            unsafe { strips.product(range, &xb, m, out.0, self.rows) };
        });
    }

    /// Many rows: each member runs gemm on its own block of output features (weight rows);
    /// half-precision weights are widened `TILE_ROWS` rows at a time into a member's scratch.
    fn packed(&self, weight: &WeightData, x: &[f32], m: usize, y: &mut [f32], team: &Team) {
        let (rows, cols) = (self.rows, self.cols);
        assert_eq!(y.len(), m * rows);
        let out = SendPtr(y.as_mut_ptr());
        let members = team.size();
        team.run(&|tid| {
            let (j0, j1) = member_rows(rows, members, tid);
            let out = &out;
            let mut tile = Vec::new();
            // f32 weights need no widening: one product for the member's whole block, so that
            // the input is packed once.
            let step = match weight {
                WeightData::F32(_) => (j1 - j0).max(1),
                _ => TILE_ROWS,
            };
            for start in (j0..j1).step_by(step) {
                let n = step.min(j1 - start);
                let block: &[f32] = match weight {
                    WeightData::F32(w) => &w[start * cols..(start + n) * cols],
                    WeightData::Bf16(w) => {
                        widen_into(&w[start * cols..(start + n) * cols], &mut tile, self.isa)
                    }
                    WeightData::F16(w) => {
                        widen_into(&w[start * cols..(start + n) * cols], &mut tile, self.isa)
                    }
                    WeightData::Quant(_) => unreachable!("quantized weights have their own kernel"),
                };
                // SAFETY: `start + n <= rows`, so every element written, `(i, start + j)` for
                // `i < m`, `j < n`, is inside `y` (`m * rows` long); members own disjoint
                // column ranges `j0..j1`, so no element is written twice.
                unsafe { gemm_xwt(m, n, cols, x, block, out.0.add(start), rows) };
            }
        });
    }
}

/// Widens `src` into `buf` (resized) and returns it.
fn widen_into<'a, E: Element>(src: &[E], buf: &'a mut Vec<f32>, isa: Isa) -> &'a [f32] {
    buf.resize(src.len(), 0.0);
    dispatch!(isa, || widen(src, buf));
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Vec<f32> {
        let mut y = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += f64::from(x[i * k + kk]) * f64::from(w[j * k + kk]);
                }
                y[i * n + j] = s as f32 + b.map_or(0.0, |b| b[j]);
            }
        }
        y
    }

    #[test]
    fn both_kernels_and_every_dtype_match_a_plain_product() {
        let team = Team::new(3);
        let (n, k) = (300, 70);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let b: Vec<f32> = (0..n).map(|i| i as f32 / 100.0).collect();
        for m in [1, 3, 6, 13, SMALL_M, SMALL_M + 1, 37] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
                .collect();
            let want = reference(&x, &w, Some(&b), m, n, k);
            // These weights are exact in bf16 and f16, so every dtype must agree closely.
            let datas = [
                WeightData::F32(w.clone()),
                WeightData::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
                WeightData::F16(w.iter().map(|&v| f16::from_f32(v)).collect()),
            ];
            for data in datas {
                let layer = Linear::new(data, n, k, Some(b.clone()));
                let mut y = vec![0.0; m * n];
                layer.forward(&x, m, &mut y, &team);
                for (g, e) in y.iter().zip(&want) {
                    assert!((g - e).abs() < 1e-3, "m {m}: {g} vs {e}");
                }
            }
        }
    }
}
