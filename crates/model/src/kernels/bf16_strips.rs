//! bf16 weights repacked in strips of 16 rows for `vdpbf16ps`, and the product on them (any
//! number of rows) on CPUs with AVX-512 BF16.
//!
//! `vdpbf16ps` multiplies 32 bf16 pairs and adds them, two by two, into 16 f32 lanes. With the
//! weights as stored (`[rows, cols]`) the lanes are partial sums of one row, and each output
//! then needs a horizontal reduction. Here the lanes are rows, as the integer strips of
//! `quant_strips.rs` do it for 8-bit weights: a strip holds 16 rows' values interleaved two
//! at a time (`[cols / 2][16 rows][2]`), so one 64-byte load gives 16 rows' next two values, a
//! pair of an input row's values is broadcast against it, and `vdpbf16ps` adds to the 16
//! rows' sums of that input row: an outer product, as an f32 gemm kernel does, at twice f32
//! FMA's rate and with no reduction. Each tile is [`STRIPS`] strips × up to [`ROWS`] input rows
//! (`STRIPS · ROWS` accumulator registers).
//!
//! The inputs are rounded to bf16 once per product (as llama.cpp does for bf16 weights).
//! Each output's sum runs over `k` in the same order whatever the other rows.
//!
//! The strips replace the rows as given (every product of the layer takes them, and an
//! embedding lookup reads its row out of them: [`Bf16Strips::row_f32`]), so they cost no
//! memory.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::bf16;

/// Rows per strip: one output per lane.
pub(crate) const STRIP: usize = 16;

/// Strips per tile.
const STRIPS: usize = 2;

/// Input rows per tile.
const ROWS: usize = 12;

/// A `[rows, cols]` bf16 matrix in strips; see the module docs.
#[derive(Debug)]
pub(crate) struct Bf16Strips {
    /// Strip `s` at `s · STRIP · cols`: for each pair `p < cols / 2`, 16 rows × 2 values.
    data: Vec<bf16>,
    rows: usize,
    cols: usize,
}

impl Bf16Strips {
    /// The strips of `w` (`rows` rows of `cols` values, `cols` even); rows past the last one
    /// in the last strip are zero.
    pub(crate) fn new(w: &[bf16], rows: usize, cols: usize) -> Self {
        assert!(
            cols.is_multiple_of(2),
            "bf16 strips need an even number of columns"
        );
        assert_eq!(w.len(), rows * cols);
        let n = rows.div_ceil(STRIP);
        let mut data = vec![bf16::ZERO; n * STRIP * cols];
        for (s, strip) in data.chunks_exact_mut(STRIP * cols).enumerate() {
            for r in 0..STRIP.min(rows - s * STRIP) {
                let row = &w[(s * STRIP + r) * cols..][..cols];
                for (p, pair) in row.chunks_exact(2).enumerate() {
                    strip[(p * STRIP + r) * 2..][..2].copy_from_slice(pair);
                }
            }
        }
        Self { data, rows, cols }
    }

    /// Strips in all.
    pub(crate) fn len(&self) -> usize {
        self.rows.div_ceil(STRIP)
    }

    /// Row `r`, widened to f32 into `out` (`cols` long).
    pub(crate) fn row_f32(&self, r: usize, out: &mut [f32]) {
        assert!(
            r < self.rows && out.len() == self.cols,
            "row {r} of [{}, {}]",
            self.rows,
            self.cols
        );
        let strip = &self.data[r / STRIP * STRIP * self.cols..][..STRIP * self.cols];
        let lane = r % STRIP;
        for (p, pair) in out.chunks_exact_mut(2).enumerate() {
            let at = (p * STRIP + lane) * 2;
            pair[0] = strip[at].to_f32();
            pair[1] = strip[at + 1].to_f32();
        }
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        self.data.len() * 2
    }

    /// `y[i · ldy + r] = Σ_k x[i, k] · w[r, k]` for the weight rows of strips `strips` and every
    /// input row `i < m` of `x` (bf16, rows of `cols`).
    ///
    /// # Safety
    /// The CPU must have AVX-512F/BW/BF16; `y` must be valid for writes at every `i · ldy + r`
    /// (`r` a row of those strips) and not accessed by anyone else meanwhile.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(crate) unsafe fn product(
        &self,
        strips: std::ops::Range<usize>,
        x: &[bf16],
        m: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        assert!(x.len() >= m * self.cols && strips.end <= self.len());
        let mut s = strips.start;
        while s < strips.end {
            let ns = (strips.end - s).min(STRIPS);
            for i0 in (0..m).step_by(ROWS) {
                let ni = (m - i0).min(ROWS);
                macro_rules! by_rows {
                    ($S:literal; $($n:literal)*) => {
                        match ni {
                            // SAFETY: strips `s..s + S` and rows `i0..i0 + n` are in bounds
                            // (above); the caller vouches for `y`.
                            $($n => unsafe { self.tile::<$S, $n>(s, x, i0, y, ldy) },)*
                            _ => unreachable!("at most ROWS rows"),
                        }
                    };
                }
                if ns == 2 {
                    by_rows!(2; 1 2 3 4 5 6 7 8 9 10 11 12);
                } else {
                    by_rows!(1; 1 2 3 4 5 6 7 8 9 10 11 12);
                }
            }
            s += ns;
        }
    }

    /// Strips `s..s + S` against input rows `i0..i0 + N`.
    #[inline(always)]
    unsafe fn tile<const S: usize, const N: usize>(
        &self,
        s: usize,
        x: &[bf16],
        i0: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        let cols = self.cols;
        let pairs = cols / 2;
        // SAFETY (whole body): strips `s..s + S` hold `pairs` vectors of 16 pairs each, input
        // rows `i0..i0 + N` hold `pairs` pairs each (the caller's bounds); stores go to the
        // strips' real rows only, where the caller allows.
        unsafe {
            let w: [*const bf16; S] =
                std::array::from_fn(|j| self.data.as_ptr().add((s + j) * STRIP * cols));
            let xp: [*const u32; N] =
                std::array::from_fn(|i| x.as_ptr().add((i0 + i) * cols).cast::<u32>());
            let mut acc = [[_mm512_setzero_ps(); N]; S];
            for p in 0..pairs {
                let wv: [__m512bh; S] = std::array::from_fn(|j| {
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                        w[j].add(p * 2 * STRIP).cast(),
                    ))
                });
                for i in 0..N {
                    let xv = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        xp[i].add(p).read_unaligned() as i32,
                    ));
                    for j in 0..S {
                        acc[j][i] = _mm512_dpbf16_ps(acc[j][i], wv[j], xv);
                    }
                }
            }
            for (j, acc) in acc.iter().enumerate() {
                let r0 = (s + j) * STRIP;
                let real = STRIP.min(self.rows - r0);
                let mask = if real == STRIP {
                    u16::MAX
                } else {
                    (1u16 << real) - 1
                };
                for (i, a) in acc.iter().enumerate() {
                    _mm512_mask_storeu_ps(y.add((i0 + i) * ldy + r0), mask, *a);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output equals the f64 sum of the bf16 products, for shapes with a partial strip,
    /// a lone strip at the end and partial input tiles; each row reads back as given.
    #[test]
    fn strips_give_the_plain_product_of_bf16_values() {
        if !super::super::linear_avx512::has_bf16_dot() {
            return;
        }
        for (rows, cols, m) in [(16, 2, 1), (50, 96, 13), (33, 40, 30), (80, 64, 25)] {
            let v = |n: usize, seed: usize| -> Vec<bf16> {
                (0..n)
                    .map(|i| {
                        bf16::from_f32(((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                    })
                    .collect()
            };
            let (w, x) = (v(rows * cols, 1), v(m * cols, 2));
            let strips = Bf16Strips::new(&w, rows, cols);
            let ldy = rows + 3;
            let mut y = vec![f32::NAN; m * ldy];
            // Two calls over halves of the strips, as two team members make them.
            let half = strips.len() / 2;
            // SAFETY: checked `has_bf16_dot`; `y` holds `m` rows of `ldy >= rows`.
            unsafe {
                strips.product(0..half, &x, m, y.as_mut_ptr(), ldy);
                strips.product(half..strips.len(), &x, m, y.as_mut_ptr(), ldy);
            }
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                strips.row_f32(r, &mut row);
                let want: Vec<f32> = w[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                assert_eq!(row, want, "row {r}");
            }
            for i in 0..m {
                for r in 0..rows {
                    let e: f64 = (0..cols)
                        .map(|k| {
                            f64::from(x[i * cols + k].to_f32())
                                * f64::from(w[r * cols + k].to_f32())
                        })
                        .sum();
                    let g = f64::from(y[i * ldy + r]);
                    assert!(
                        (g - e).abs() <= 1e-5 * (1.0 + e.abs()),
                        "{rows}x{cols} m {m} [{i}, {r}]: {g} vs {e}"
                    );
                }
                assert!(
                    y[i * ldy + rows..(i + 1) * ldy].iter().all(|v| v.is_nan()),
                    "wrote past the rows"
                );
            }
        }
    }
}
