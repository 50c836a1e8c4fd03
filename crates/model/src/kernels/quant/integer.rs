//! The integer path of [`QuantMatrix`]: activations quantized to 8 bits per 32-value block
//! (`Q8Rows`), dotted with the weights in integers on 16-row strips (`quant_strips.rs`) or on
//! the rows as stored (`quant_vnni.rs`, `kquant_vnni.rs`); which matrices take it and with how
//! many activation levels.

use super::QuantType;
#[cfg(target_arch = "x86_64")]
use super::{QuantMatrix, ROWS_PER_TASK, transpose_into};
#[cfg(target_arch = "x86_64")]
use crate::kernels::quant_vnni::Q8Rows;
#[cfg(target_arch = "x86_64")]
use crate::kernels::team::{SendPtr, Team};
#[cfg(target_arch = "x86_64")]
use crate::kernels::{kquant_vnni, quant_strips, quant_vnni};

#[cfg(target_arch = "x86_64")]
impl QuantMatrix {
    /// The few-rows product in integers; see `quant_vnni.rs`.
    pub(super) fn few_rows_integer(&self, x: &[f32], m: usize, y: &mut [f32], team: &Team) {
        let rows = self.rows;
        let levels = self.activation_levels;
        let xq = if levels == 2 {
            Q8Rows::quantize_two_levels(x, m, self.cols)
        } else {
            Q8Rows::quantize(x, m, self.cols)
        };
        if let Some(strips) = &self.strips {
            return self.strips_product(strips, &xq, m, y, team);
        }
        let xq = xq.with_lanes();
        let n = xq.rows();
        let mut yt = vec![0f32; rows * m];
        team.chunks(&mut yt, ROWS_PER_TASK * m, &|task, out| {
            let first = task * ROWS_PER_TASK;
            let task_rows = out.len() / m;
            let mut each = vec![0f32; n * 4];
            let mut r = 0;
            while r < task_rows {
                // Four (or two) weight rows at a time share each activation load; a group
                // must be of one type (a fused matrix may mix them).
                let fits = |k: usize| n <= quant_vnni::group_width(k) && r + k <= task_rows;
                let k = if fits(4) && self.group_dots::<4>(first + r, &xq, &mut each) {
                    4
                } else if fits(2) && self.group_dots::<2>(first + r, &xq, &mut each) {
                    2
                } else {
                    let (ty, bytes) = self.row(first + r);
                    // SAFETY: `integer_dots` was set only where `available()` held and every
                    // part's type is supported; a row holds `cols / 32` blocks; `each` has a
                    // value per quantized row.
                    unsafe { integer_row_dot(ty, bytes, &xq, &mut each[..n]) };
                    1
                };
                let o = &mut out[r * m..(r + k) * m];
                for (o, dots) in o.chunks_exact_mut(m).zip(each.chunks_exact(n)) {
                    for (oi, level) in o.iter_mut().zip(dots.chunks_exact(levels)) {
                        *oi = level.iter().sum();
                    }
                }
                r += k;
            }
        });
        transpose_into(&yt, m, rows, y);
    }

    /// The integer product on the repacked rows (`quant_strips.rs`): ranges of strips claimed
    /// by the members ([`Team::ranges`]), each output written once, the activation levels of an
    /// input row added as `few_rows_integer` adds them.
    fn strips_product(
        &self,
        strips: &quant_strips::Strips,
        xq: &Q8Rows,
        m: usize,
        y: &mut [f32],
        team: &Team,
    ) {
        use quant_strips::STRIP;
        let (rows, levels, n) = (self.rows, self.activation_levels, xq.rows());
        let out = SendPtr(y.as_mut_ptr());
        team.ranges(strips.len(), &|range| {
            let out = &out;
            let mut lanes = vec![[0f32; STRIP]; n];
            for s in range {
                // SAFETY: strips exist only where the VNNI kernels are available.
                let (r0, real) = unsafe { strips.dot(s, xq, &mut lanes) };
                for (i, level) in lanes.chunks_exact(levels).enumerate() {
                    let mut v = level[0];
                    for l in &level[1..] {
                        for (v, l) in v.iter_mut().zip(l) {
                            *v += l;
                        }
                    }
                    // SAFETY: `i < m` and `r0 + real <= rows`, so the `real` elements from
                    // `i * rows + r0` are inside `y` (`m * rows` long, asserted by the
                    // callers); strips cover disjoint rows and each range is one member's, so
                    // nothing is written twice.
                    // A whole strip is one 64-byte store rather than a call to `memmove`.
                    unsafe {
                        let o = out.0.add(i * rows + r0);
                        if real == STRIP {
                            o.cast::<[f32; STRIP]>().write_unaligned(v);
                        } else {
                            std::ptr::copy_nonoverlapping(v.as_ptr(), o, real);
                        }
                    }
                }
            }
        });
        debug_assert_eq!(n, m * levels);
    }

    /// The integer products of weight rows `first..first + R` with every row of `xq` into
    /// `each` (`R · xq.rows()` values, by weight row), when those rows are of one type; false
    /// (and nothing done) when not.
    fn group_dots<const R: usize>(&self, first: usize, xq: &Q8Rows, each: &mut [f32]) -> bool {
        let rows: [(QuantType, &[u8]); R] = std::array::from_fn(|i| self.row(first + i));
        let ty = rows[0].0;
        if rows.iter().any(|(t, _)| *t != ty) {
            return false;
        }
        let n = xq.rows();
        // SAFETY: as for `integer_row_dot` in `few_rows_integer`, for every row of the group;
        // the caller checked `n <= group_width(R)`.
        unsafe { integer_rows_dot(ty, rows.map(|(_, b)| b), xq, &mut each[..R * n]) };
        true
    }
}

/// One weight row of `ty` against every quantized activation row.
///
/// # Safety
/// As `quant_vnni::row_dot`, for whichever file's kernel takes `ty`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn integer_row_dot(ty: QuantType, bytes: &[u8], x: &Q8Rows, out: &mut [f32]) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if kquant_vnni::supports(ty) {
            kquant_vnni::row_dot(ty, bytes, x, out);
        } else {
            quant_vnni::row_dot(ty, bytes, x, out);
        }
    }
}

/// `out[r * n + j]` for the weight rows `w`, all of type `ty`, and the `n` rows of `x`.
///
/// # Safety
/// As [`integer_row_dot`], for every row of `w`; `n <= group_width(R)`.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn integer_rows_dot<const R: usize>(
    ty: QuantType,
    w: [&[u8]; R],
    x: &Q8Rows,
    out: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if kquant_vnni::supports(ty) {
            kquant_vnni::rows_dot(ty, w, x, out);
        } else {
            quant_vnni::rows_dot(ty, w, x, out);
        }
    }
}

/// Levels of activation quantization on the integer path: one (8 bits per 32-value block, as
/// llama.cpp), unless `WAYFINDER_ACTIVATION_LEVELS` says otherwise for a comparison run. Every
/// row of a matrix, prompt or generated, takes the same strips and levels, so a token's
/// result does not depend on its batch and the prefix cache's outputs equal the uncached ones
/// bit for bit (with f32 prompt rows through gemm they did not, and one level's rounding
/// turned those last-bit differences into other tokens).
///
/// The output head took two levels (the rounding's remainder rounded to 8 bits again and
/// multiplied too) until 2026-12-02: with two levels inside the layers, one at the head had
/// drifted the real Q4_1 model's answer off "Paris". With one inside the layers, one at the
/// head too answers as llama-server does on that file (greedy, side by side: 4 of 5 chat
/// prompts token for token where two at the head gave 3) and decodes faster (Q4_1, 16
/// sequences: +10–15 %, the head's integer work halved).
pub(super) fn activation_levels() -> usize {
    levels_override().unwrap_or(1)
}

/// `WAYFINDER_ACTIVATION_LEVELS=1` or `=2`: every matrix on that many levels, for comparing.
fn levels_override() -> Option<usize> {
    match std::env::var("WAYFINDER_ACTIVATION_LEVELS").as_deref() {
        Ok("1") => Some(1),
        Ok("2") => Some(2),
        _ => None,
    }
}

/// Whether the CPU has the integer kernels (and `WAYFINDER_INTEGER_DOTS=0` does not turn them
/// off, for comparing the two paths).
pub(super) fn integer_dots_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        quant_vnni::available()
            && std::env::var_os("WAYFINDER_INTEGER_DOTS").is_none_or(|v| v != "0")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether `ty` has an integer kernel.
pub(super) fn integer_dot_type(ty: QuantType) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        quant_vnni::supports(ty) || kquant_vnni::supports(ty)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        false
    }
}
