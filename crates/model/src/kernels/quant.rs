//! Products on block-quantized weights as GGUF files store them (ggml's Q4_0 … Q6_K).
//!
//! A [`QuantMatrix`] is `[rows, cols]` with each row a run of ggml blocks (32 or 256 values
//! each), left where it lies — usually in the GGUF file's memory map, so a 4-bit model takes
//! 4-bit memory. Several tensors with the same input (q, k and v; gate and up) are kept as parts
//! of one matrix without copying, each in its own type: a Q4_K_M file stores `attn_v` in Q6_K
//! beside a Q4_K `attn_q`, and may leave a tensor in F16 or F32, which are "blocks" of one
//! value here.
//!
//! The block formats are ggml's; candle's decoders (`candle_core::quantized::k_quants`, a port
//! of ggml's reference code) are the fallback and the tests' reference. How a product walks
//! the blocks:
//!
//! - **8-bit activations** (the rows `forward_generated` is given, whatever their number; in
//!   `forward`, `m` times the activation levels at most `INTEGER_MAX_QROWS`), on CPUs with
//!   AVX-512 VNNI and matrices whose parts are all Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K
//!   (on strips only) or Q6_K: the activations are quantized to 8 bits per 32-value block
//!   once (one level, as llama.cpp; see `activation_levels`),
//!   and each weight row is dotted with them in integers: on 16-row strips repacked at load (`quant_strips.rs`; the
//!   strips are a copy, the blocks as stored stay for the f32 paths; `WAYFINDER_STRIPS=0`
//!   keeps the rows as stored, `quant_vnni.rs`, `kquant_vnni.rs`); `quant/integer.rs` holds
//!   this path. The decoder sends every token's row this way by default, prompt tokens' too
//!   ([`QuantMatrix::forward_generated`]), and prompt tokens' rows the f32 ways below when
//!   told to ([`QuantMatrix::forward_prompt`]); see `rows.rs`.
//! - **few rows** otherwise (`m <= SMALL_M`): each weight row is dequantized once into a row
//!   buffer (a few KiB, in L1) and dotted with every input row in f32.
//! - **many rows** (prefill, batched decode): each team member dequantizes `TILE_ROWS` of its
//!   weight rows at a time into a scratch tile and runs gemm's f32 kernel on it.
//!
//! Dequantization is AVX-512 where there is a kernel for the type (`quant_vnni.rs` for the
//! 32-value formats, `kquant_avx512.rs` for Q4_K and Q6_K), candle's otherwise. Tasks of
//! `ROWS_PER_TASK` weight rows (few rows) or a member's block of rows (many rows) are split over
//! the [`Team`]; nothing ever dequantizes a whole tensor.

use std::sync::Arc;

use candle_core::quantized::k_quants::{
    BlockQ2K, BlockQ3K, BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K,
    BlockQ8_0, GgmlType,
};
use half::{bf16, f16};

use super::products::{SMALL_M, gemm_xwt, member_rows};
pub use super::quant_type::QuantType;
use super::simd::{Isa, dispatch, dot};
use super::team::{SendPtr, Team};
use integer::{activation_levels, integer_dot_type, integer_dots_available};

mod integer;

/// Weight rows per task of the few-rows kernel.
const ROWS_PER_TASK: usize = 64;

/// Up to this many quantized activation rows (input rows × activation levels), matrices with
/// integer kernels use them; beyond, dequantizing tiles for gemm wins (measured on
/// SmolLM2-135M Q4_1, 2 threads, with two levels: 8 sequences 94 vs 55-63 tok/s with gemm, 16
/// sequences 83 vs 116; with one level, 16 sequences: see BENCHMARKS).
const INTEGER_MAX_QROWS: usize = 16;

/// Weight rows dequantized per gemm call of the many-rows kernel.
const TILE_ROWS: usize = 128;

// Every block type is plain integers and f16s; rows start on 2-byte boundaries (4 for f32,
// checked in `QuantMatrix::new`), which is all their alignment asks.
const _: () = {
    assert!(std::mem::align_of::<BlockQ4_0>() <= 2);
    assert!(std::mem::align_of::<BlockQ4_1>() <= 2);
    assert!(std::mem::align_of::<BlockQ5_0>() <= 2);
    assert!(std::mem::align_of::<BlockQ5_1>() <= 2);
    assert!(std::mem::align_of::<BlockQ8_0>() <= 2);
    assert!(std::mem::align_of::<BlockQ2K>() <= 2);
    assert!(std::mem::align_of::<BlockQ3K>() <= 2);
    assert!(std::mem::align_of::<BlockQ4K>() <= 2);
    assert!(std::mem::align_of::<BlockQ5K>() <= 2);
    assert!(std::mem::align_of::<BlockQ6K>() <= 2);
};

/// Bytes shared by every matrix that lies in them: a file's memory map, or an owned buffer.
#[derive(Clone)]
pub struct SharedBytes(Arc<dyn AsRef<[u8]> + Send + Sync>);

impl SharedBytes {
    /// Shares `bytes`.
    pub fn new(bytes: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        Self(Arc::new(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        (*self.0).as_ref()
    }
}

impl std::fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.as_slice().len())
    }
}

/// A quantized matrix that cannot be built from the bytes given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantLayoutError {
    /// The row length is not a whole number of blocks.
    #[error("{cols} columns are not a whole number of {ty} blocks of {block}")]
    PartialBlock {
        /// The type.
        ty: &'static str,
        /// Values per block.
        block: usize,
        /// Columns asked for.
        cols: usize,
    },
    /// A part reaches past its bytes.
    #[error("{rows} rows of {row_bytes} bytes at offset {offset} overrun {len} bytes")]
    OutOfBounds {
        /// Rows of the part.
        rows: usize,
        /// Bytes per row.
        row_bytes: usize,
        /// Where the part starts.
        offset: usize,
        /// Bytes available.
        len: usize,
    },
    /// A part does not start on its type's alignment.
    #[error("data at offset {0} is misaligned for its type")]
    Misaligned(usize),
    /// No parts.
    #[error("a matrix needs at least one part")]
    Empty,
}

/// `rows` rows of type `ty` lying at `offset` in `bytes`: one tensor of a stacked matrix.
#[derive(Debug, Clone)]
pub struct QuantPart {
    /// The rows' type.
    pub ty: QuantType,
    /// The bytes they lie in.
    pub bytes: SharedBytes,
    /// Where the first row starts.
    pub offset: usize,
    /// Rows.
    pub rows: usize,
}

/// A part placed in its matrix.
#[derive(Debug, Clone)]
struct Part {
    ty: QuantType,
    bytes: SharedBytes,
    offset: usize,
    first: usize,
    rows: usize,
    row_bytes: usize,
}

/// A `[rows, cols]` block-quantized matrix; see the module docs.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
    /// Every part has an integer kernel on this CPU.
    integer_dots: bool,
    /// Levels of 8-bit activation quantization on the integer path (1 or 2; see
    /// `Q8Rows::quantize_two_levels`): [`activation_levels`].
    activation_levels: usize,
    /// The rows repacked for the integer path, where every part's type has strips
    /// (`quant_strips.rs`).
    #[cfg(target_arch = "x86_64")]
    strips: Option<Arc<super::quant_strips::Strips>>,
}

impl QuantMatrix {
    /// A matrix of `cols` columns made of `parts` stacked in order.
    pub fn new(cols: usize, parts: Vec<QuantPart>) -> Result<Self, QuantLayoutError> {
        if parts.is_empty() {
            return Err(QuantLayoutError::Empty);
        }
        let mut first = 0;
        let mut stacked = Vec::with_capacity(parts.len());
        for QuantPart {
            ty,
            bytes,
            offset,
            rows,
        } in parts
        {
            let block = ty.block_values();
            if cols == 0 || !cols.is_multiple_of(block) {
                return Err(QuantLayoutError::PartialBlock {
                    ty: ty.name(),
                    block,
                    cols,
                });
            }
            let row_bytes = cols / block * ty.block_bytes();
            let len = bytes.as_slice().len();
            let end = rows
                .checked_mul(row_bytes)
                .and_then(|n| n.checked_add(offset));
            if end.is_none_or(|e| e > len) {
                return Err(QuantLayoutError::OutOfBounds {
                    rows,
                    row_bytes,
                    offset,
                    len,
                });
            }
            if !(bytes.as_slice().as_ptr() as usize + offset).is_multiple_of(ty.align()) {
                return Err(QuantLayoutError::Misaligned(offset));
            }
            stacked.push(Part {
                ty,
                bytes,
                offset,
                first,
                rows,
                row_bytes,
            });
            first += rows;
        }
        let row_kernels =
            integer_dots_available() && stacked.iter().all(|p| integer_dot_type(p.ty));
        #[cfg(target_arch = "x86_64")]
        // `WAYFINDER_STRIPS=0` keeps the row kernels, for comparing the two.
        let strips = if integer_dots_available()
            && stacked.iter().all(|p| super::quant_strips::supports(p.ty))
            && std::env::var("WAYFINDER_STRIPS").as_deref() != Ok("0")
        {
            let parts: Vec<_> = stacked
                .iter()
                .map(|p| super::quant_strips::PartRows {
                    ty: p.ty,
                    bytes: &p.bytes.as_slice()[p.offset..p.offset + p.rows * p.row_bytes],
                    rows: p.rows,
                    first: p.first,
                })
                .collect();
            // SAFETY: `integer_dots_available` held.
            unsafe { super::quant_strips::Strips::new(&parts, cols) }.map(Arc::new)
        } else {
            None
        };
        // The integer path needs strips or a row kernel for every part (Q5_K has strips
        // alone).
        #[cfg(target_arch = "x86_64")]
        let integer_dots = row_kernels || strips.is_some();
        #[cfg(not(target_arch = "x86_64"))]
        let integer_dots = row_kernels;
        Ok(Self {
            rows: first,
            cols,
            parts: stacked,
            integer_dots,
            activation_levels: activation_levels(),
            #[cfg(target_arch = "x86_64")]
            strips,
        })
    }

    /// The types of the parts, in order.
    pub fn part_types(&self) -> impl Iterator<Item = QuantType> + '_ {
        self.parts.iter().map(|p| p.ty)
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix occupies (its blocks and, where there are, its strips).
    pub fn size_in_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        let strips = self.strips.as_ref().map_or(0, |s| s.size_in_bytes());
        #[cfg(not(target_arch = "x86_64"))]
        let strips = 0;
        self.parts
            .iter()
            .map(|p| p.rows * p.row_bytes)
            .sum::<usize>()
            + strips
    }

    /// The type and blocks of row `r`.
    ///
    /// # Panics
    /// If `r >= rows`.
    fn row(&self, r: usize) -> (QuantType, &[u8]) {
        let part = self
            .parts
            .iter()
            .find(|p| r < p.first + p.rows)
            .unwrap_or_else(|| panic!("row {r} of a {}-row matrix", self.rows));
        let start = part.offset + (r - part.first) * part.row_bytes;
        (
            part.ty,
            &part.bytes.as_slice()[start..start + part.row_bytes],
        )
    }

    /// Row `r`, dequantized into `out` (`cols` long).
    ///
    /// # Panics
    /// If `r >= rows` or `out` is not `cols` long.
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert_eq!(out.len(), self.cols, "row buffer is not {} long", self.cols);
        let (ty, bytes) = self.row(r);
        dequantize(ty, bytes, out);
    }

    /// Rows `r0..r0 + n`, dequantized one after another into `out` (`n · cols` long).
    fn dequantize_rows(&self, r0: usize, n: usize, out: &mut [f32]) {
        for (i, o) in out.chunks_exact_mut(self.cols).take(n).enumerate() {
            let (ty, bytes) = self.row(r0 + i);
            dequantize(ty, bytes, o);
        }
    }

    /// `y[m, rows] = x[m, cols] · Wᵀ`, computed by `team`; see the module docs.
    ///
    /// # Panics
    /// If `x` or `y` are not `m` whole rows.
    pub fn forward(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, isa: Isa) {
        assert_eq!(x.len(), m * self.cols, "input is not [{m}, {}]", self.cols);
        assert_eq!(y.len(), m * self.rows, "output is not [{m}, {}]", self.rows);
        if m == 0 {
            return;
        }
        let few_rows_max = if self.integer_dots {
            self.integer_max_m()
        } else {
            SMALL_M
        };
        if m <= few_rows_max {
            self.few_rows(x, m, y, team, isa);
        } else {
            self.many_rows(x, m, y, team, isa);
        }
    }

    /// `forward` for generated tokens' rows (see `rows.rs`): on a matrix with integer kernels,
    /// every row on 8-bit activations (all at once on strips, [`Self::integer_max_m`] rows at a
    /// time on the row kernels), so that no row's result depends on how many rows it came
    /// with; `forward` otherwise.
    ///
    /// # Panics
    /// As `forward`.
    pub fn forward_generated(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, isa: Isa) {
        #[cfg(target_arch = "x86_64")]
        if self.integer_dots {
            assert_eq!(x.len(), m * self.cols, "input is not [{m}, {}]", self.cols);
            assert_eq!(y.len(), m * self.rows, "output is not [{m}, {}]", self.rows);
            // A strip (a few KiB) stays in L1 while every group of 16 activation rows passes
            // over it (`Strips::dot`), so the weights are read from memory once whatever `m`;
            // the row kernels take `integer_max_m` rows per pass over the weights.
            let step = if self.strips.is_some() {
                m.max(1)
            } else {
                self.integer_max_m()
            };
            for (xs, ys) in x
                .chunks(step * self.cols)
                .zip(y.chunks_mut(step * self.rows))
            {
                self.few_rows_integer(xs, xs.len() / self.cols, ys, team);
            }
            return;
        }
        self.forward(x, m, y, team, isa);
    }

    /// `forward` for prompt tokens' rows (see `rows.rs`): f32 activations against dequantized
    /// weights, whatever the matrix.
    ///
    /// # Panics
    /// As `forward`.
    pub fn forward_prompt(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, isa: Isa) {
        assert_eq!(x.len(), m * self.cols, "input is not [{m}, {}]", self.cols);
        assert_eq!(y.len(), m * self.rows, "output is not [{m}, {}]", self.rows);
        if m == 0 {
            return;
        }
        if m <= SMALL_M {
            self.few_rows_f32(x, m, y, team, isa);
        } else {
            self.many_rows(x, m, y, team, isa);
        }
    }

    /// This matrix with `levels` of activation quantization on the integer path (1 or 2),
    /// whatever the default: the tests' way to cover both.
    #[cfg(test)]
    pub(crate) fn with_activation_levels(mut self, levels: usize) -> Self {
        assert!(matches!(levels, 1 | 2), "one or two levels, not {levels}");
        self.activation_levels = levels;
        self
    }

    /// Levels of 8-bit activation quantization on the integer path.
    pub fn activation_levels(&self) -> usize {
        self.activation_levels
    }

    /// Whether products with `m` input rows quantize the activations to 8 bits.
    pub fn quantizes_activations(&self, m: usize) -> bool {
        self.integer_dots && m <= self.integer_max_m()
    }

    /// The most input rows the integer kernels take for this matrix.
    pub fn integer_max_m(&self) -> usize {
        INTEGER_MAX_QROWS / self.activation_levels
    }

    fn few_rows(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, isa: Isa) {
        #[cfg(target_arch = "x86_64")]
        if self.integer_dots {
            return self.few_rows_integer(x, m, y, team);
        }
        self.few_rows_f32(x, m, y, team, isa);
    }

    /// Few rows in f32: each weight row dequantized once and dotted with every input row.
    fn few_rows_f32(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, isa: Isa) {
        let (rows, cols) = (self.rows, self.cols);
        // Outputs transposed ([rows, m]) so that each task owns a contiguous range.
        let mut yt = vec![0f32; rows * m];
        team.chunks(&mut yt, ROWS_PER_TASK * m, &|task, out| {
            let first = task * ROWS_PER_TASK;
            let mut w = vec![0f32; cols];
            for (r, o) in out.chunks_exact_mut(m).enumerate() {
                self.dequantize_row(first + r, &mut w);
                dispatch!(isa, || {
                    for (i, oi) in o.iter_mut().enumerate() {
                        *oi = dot(&x[i * cols..(i + 1) * cols], &w);
                    }
                });
            }
        });
        transpose_into(&yt, m, rows, y);
    }

    fn many_rows(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team, _isa: Isa) {
        let (rows, cols) = (self.rows, self.cols);
        let out = SendPtr(y.as_mut_ptr());
        let members = team.size();
        team.run(&|tid| {
            let (j0, j1) = member_rows(rows, members, tid);
            let out = &out;
            let mut tile = vec![0f32; TILE_ROWS.min(j1 - j0) * cols];
            for start in (j0..j1).step_by(TILE_ROWS) {
                let n = TILE_ROWS.min(j1 - start);
                self.dequantize_rows(start, n, &mut tile);
                // SAFETY: `start + n <= rows`, so every element written, `(i, start + j)` for
                // `i < m`, `j < n`, is inside `y` (`m * rows` long); members own disjoint
                // column ranges `j0..j1`, so no element is written twice.
                unsafe { gemm_xwt(m, n, cols, x, &tile[..n * cols], out.0.add(start), rows) };
            }
        });
    }
}

/// `y[i, r] = yt[r, i]` for `m` columns and `rows` rows.
fn transpose_into(yt: &[f32], m: usize, rows: usize, y: &mut [f32]) {
    for (r, o) in yt.chunks_exact(m).enumerate() {
        for (i, &v) in o.iter().enumerate() {
            y[i * rows + r] = v;
        }
    }
}

/// Dequantizes the whole blocks in `bytes` into `out`: with AVX-512 where this CPU and type
/// have a kernel (`quant_vnni.rs`, `kquant_avx512.rs`), else with candle's decoders.
fn dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::{kquant_avx512, quant_vnni};
        if quant_vnni::supports(ty) && quant_vnni::available() {
            // SAFETY: the CPU and the type are checked; `bytes` holds whole blocks for `out`.
            unsafe { quant_vnni::dequantize(ty, bytes, out) };
            return;
        }
        if kquant_avx512::supports(ty) && kquant_avx512::available() {
            // SAFETY: as above.
            unsafe { kquant_avx512::dequantize(ty, bytes, out) };
            return;
        }
    }
    reference_dequantize(ty, bytes, out);
}

/// Dequantizes with candle's decoders (a port of ggml's reference code).
fn reference_dequantize(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        QuantType::F32 => to_float::<f32>(bytes, out),
        QuantType::F16 => to_float::<f16>(bytes, out),
        QuantType::Bf16 => to_float::<bf16>(bytes, out),
        QuantType::Q4_0 => to_float::<BlockQ4_0>(bytes, out),
        QuantType::Q4_1 => to_float::<BlockQ4_1>(bytes, out),
        QuantType::Q5_0 => to_float::<BlockQ5_0>(bytes, out),
        QuantType::Q5_1 => to_float::<BlockQ5_1>(bytes, out),
        QuantType::Q8_0 => to_float::<BlockQ8_0>(bytes, out),
        QuantType::Q2K => to_float::<BlockQ2K>(bytes, out),
        QuantType::Q3K => to_float::<BlockQ3K>(bytes, out),
        QuantType::Q4K => to_float::<BlockQ4K>(bytes, out),
        QuantType::Q5K => to_float::<BlockQ5K>(bytes, out),
        QuantType::Q6K => to_float::<BlockQ6K>(bytes, out),
    }
}

fn to_float<B: GgmlType>(bytes: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    let n = bytes.len() / size;
    assert!(
        n * size == bytes.len() && n * B::BLCK_SIZE == out.len(),
        "{} bytes are not the blocks of {} values",
        bytes.len(),
        out.len()
    );
    assert!(
        (bytes.as_ptr() as usize).is_multiple_of(std::mem::align_of::<B>()),
        "misaligned blocks"
    );
    // SAFETY: `B` is f32, f16, bf16 or a `repr(C)` block of integers and f16s, for which every
    // bit pattern is a value; the bytes hold exactly `n` blocks and are aligned for `B` (both
    // asserted).
    let blocks = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) };
    B::to_float(blocks, out);
}

/// Quantizes `values` (a whole number of blocks) with candle's reference quantizer; for tests
/// and for writing GGUF files.
pub fn quantize(ty: QuantType, values: &[f32]) -> Vec<u8> {
    fn go<B: GgmlType>(values: &[f32]) -> Vec<u8> {
        let mut blocks = vec![B::zeros(); values.len() / B::BLCK_SIZE];
        B::from_float(values, &mut blocks);
        let size = std::mem::size_of::<B>();
        // SAFETY: the blocks are plain data with no padding (floats, or `repr(C)` of u8/i8/f16
        // arrays whose sizes candle asserts add up), so their bytes may be read as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), blocks.len() * size)
        };
        bytes.to_vec()
    }
    assert!(
        values.len().is_multiple_of(ty.block_values()),
        "not a whole number of blocks"
    );
    match ty {
        QuantType::F32 => go::<f32>(values),
        QuantType::F16 => go::<f16>(values),
        QuantType::Bf16 => go::<bf16>(values),
        QuantType::Q4_0 => go::<BlockQ4_0>(values),
        QuantType::Q4_1 => go::<BlockQ4_1>(values),
        QuantType::Q5_0 => go::<BlockQ5_0>(values),
        QuantType::Q5_1 => go::<BlockQ5_1>(values),
        QuantType::Q8_0 => go::<BlockQ8_0>(values),
        QuantType::Q2K => go::<BlockQ2K>(values),
        QuantType::Q3K => go::<BlockQ3K>(values),
        QuantType::Q4K => go::<BlockQ4K>(values),
        QuantType::Q5K => go::<BlockQ5K>(values),
        QuantType::Q6K => go::<BlockQ6K>(values),
    }
}

#[cfg(test)]
#[path = "quant_tests.rs"]
mod tests;
