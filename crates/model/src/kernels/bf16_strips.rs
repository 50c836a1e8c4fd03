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
//! memory. They are held packed in 12 bits a value where the exponents allow
//! (`bf16_pack.rs`, lossless): up to [`DECODE_IN_TILES`] input rows, tiles of one strip ×
//! up to [`PACKED_ROWS`] input rows decode the weights in registers as they go; beyond, each
//! strip is decoded once into a scratch that tiles of plain strips read.
//! `WAYFINDER_BF16_PACK=0` keeps them plain, for comparing the two.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use half::bf16;

use super::bf16_pack::PackedStrips;

/// Rows per strip: one output per lane.
pub(crate) const STRIP: usize = 16;

/// Strips per tile.
const STRIPS: usize = 2;

/// Input rows per tile.
const ROWS: usize = 12;

/// Input rows up to which each tile decodes packed strips in registers (beyond, they are
/// decoded once into a scratch all tiles read).
const DECODE_IN_TILES: usize = 48;

/// Input rows per tile of a packed strip.
const PACKED_ROWS: usize = 16;

/// A `[rows, cols]` bf16 matrix in strips; see the module docs.
#[derive(Debug)]
pub(crate) struct Bf16Strips {
    storage: Storage,
    rows: usize,
    cols: usize,
}

/// How the strips are held.
#[derive(Debug)]
enum Storage {
    /// Strip `s` at `s · STRIP · cols`: for each pair `p < cols / 2`, 16 rows × 2 values.
    Plain(Vec<bf16>),
    /// The same values, packed (`bf16_pack.rs`).
    Packed(PackedStrips),
}

thread_local! {
    /// Per-thread scratch for decoded strips, reused across products.
    static DECODED: std::cell::RefCell<Vec<bf16>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Bf16Strips {
    /// The strips of `w` (`rows` rows of `cols` values, `cols` even), packed unless
    /// `WAYFINDER_BF16_PACK=0`; see [`Self::with_packing`].
    pub(crate) fn new(w: &[bf16], rows: usize, cols: usize) -> Self {
        let pack = std::env::var("WAYFINDER_BF16_PACK").as_deref() != Ok("0");
        Self::with_packing(w, rows, cols, pack)
    }

    /// The strips of `w`; rows past the last one in the last strip are zero. With `pack`, held
    /// packed where the values' exponents allow it.
    pub(crate) fn with_packing(w: &[bf16], rows: usize, cols: usize, pack: bool) -> Self {
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
        let packed = pack
            .then(|| PackedStrips::pack(&data, n, cols / 2))
            .flatten();
        let storage = packed.map_or(Storage::Plain(data), Storage::Packed);
        Self {
            storage,
            rows,
            cols,
        }
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
        let (s, lane) = (r / STRIP, r % STRIP);
        let value = |i: usize| match &self.storage {
            Storage::Plain(data) => data[s * STRIP * self.cols + i],
            Storage::Packed(p) => p.value(s, i),
        };
        for (p, pair) in out.chunks_exact_mut(2).enumerate() {
            let at = (p * STRIP + lane) * 2;
            pair[0] = value(at).to_f32();
            pair[1] = value(at + 1).to_f32();
        }
    }

    /// Bytes held.
    pub(crate) fn size_in_bytes(&self) -> usize {
        match &self.storage {
            Storage::Plain(data) => data.len() * 2,
            Storage::Packed(p) => p.size_in_bytes(),
        }
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
        let strip_len = STRIP * self.cols;
        let mut s = strips.start;
        while s < strips.end {
            let ns = (strips.end - s).min(STRIPS);
            match &self.storage {
                // SAFETY: strips `s..s + ns` are in `data`; the rest is forwarded.
                Storage::Plain(data) => unsafe {
                    self.tiles(data.as_ptr().add(s * strip_len), s, ns, x, m, y, ldy)
                },
                // A few input tiles: each decodes as it goes, in registers.
                // SAFETY: as above.
                Storage::Packed(packed) if m <= DECODE_IN_TILES => unsafe {
                    self.tiles_packed(packed, s, ns, x, m, y, ldy)
                },
                // More: decode each strip once, for all the tiles.
                Storage::Packed(packed) => DECODED.with_borrow_mut(|buf| {
                    buf.resize(STRIPS * strip_len, bf16::ZERO);
                    for (j, out) in buf.chunks_exact_mut(strip_len).take(ns).enumerate() {
                        // SAFETY: the CPU has AVX-512BW (with BF16, the caller's promise).
                        unsafe { packed.decode(s + j, out) };
                    }
                    // SAFETY: `buf` holds strips `s..s + ns` decoded; the rest is forwarded.
                    unsafe { self.tiles(buf.as_ptr(), s, ns, x, m, y, ldy) }
                }),
            }
            s += ns;
        }
    }

    /// Strips `s..s + ns` (`ns <= STRIPS`), held plain from `w` on, against every input row.
    ///
    /// # Safety
    /// As [`Self::product`]; `w` must hold `ns` strips.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tiles(
        &self,
        w: *const bf16,
        s: usize,
        ns: usize,
        x: &[bf16],
        m: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        for i0 in (0..m).step_by(ROWS) {
            let ni = (m - i0).min(ROWS);
            macro_rules! by_rows {
                ($S:literal; $($n:literal)*) => {
                    match ni {
                        // SAFETY: strips `s..s + S` at `w` and rows `i0..i0 + n` are in
                        // bounds (the caller); the caller vouches for `y`.
                        $($n => unsafe { self.tile::<$S, $n>(w, s, x, i0, y, ldy) },)*
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
    }

    /// Packed strips `s..s + ns` against input rows `0..m`, one strip at a time, decoded in
    /// registers: each vector decoded serves up to [`PACKED_ROWS`] input rows.
    ///
    /// One strip per tile, where plain strips take two: a thread then reads one stream, and
    /// since strips lie one after another, each tile's strip continues where the last one
    /// ended, which the hardware prefetcher follows. With two strips per tile (two streams that
    /// jump apart at every tile) the products of a SmolLM2-135M decode step took 14–38 % longer
    /// on one input row (20 alternating pairs out of 20) and 12–27 % longer on 8 (10 out of 10)
    /// (`examples/decode_products.rs`); plain strips showed no such difference.
    ///
    /// # Safety
    /// As [`Self::product`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn tiles_packed(
        &self,
        packed: &PackedStrips,
        s: usize,
        ns: usize,
        x: &[bf16],
        m: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        macro_rules! by_rows {
            ($s:expr, $i0:expr, $rows:expr; $($n:literal)*) => {
                match $rows {
                    // SAFETY: forwarded from the caller.
                    $($n => unsafe { self.tile_packed::<$n>(packed, $s, x, $i0, y, ldy) },)*
                    _ => unreachable!("at most PACKED_ROWS rows"),
                }
            };
        }
        for s in s..s + ns {
            for i0 in (0..m).step_by(PACKED_ROWS) {
                by_rows!(s, i0, (m - i0).min(PACKED_ROWS);
                    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16);
            }
        }
    }

    /// Packed strip `s` against input rows `i0..i0 + N`, each pair of vectors decoded in
    /// registers as it is needed.
    #[inline(always)]
    unsafe fn tile_packed<const N: usize>(
        &self,
        packed: &PackedStrips,
        s: usize,
        x: &[bf16],
        i0: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        let cols = self.cols;
        let pairs = cols / 2;
        // SAFETY (whole body): the strip holds `pairs` vectors, read through the cursor a
        // group at a time in order; input rows `i0..i0 + N` hold `pairs` pairs each (the caller's
        // bounds); stores as in `tile`.
        unsafe {
            let mut cursor = packed.cursor(s);
            let xp: [*const u32; N] =
                std::array::from_fn(|i| x.as_ptr().add((i0 + i) * cols).cast::<u32>());
            let mut acc = [_mm512_setzero_ps(); N];
            // (Macros, not closures: intrinsics in a closure may not inherit the caller's
            // target features and become calls.)
            macro_rules! bh {
                ($v:expr) => {
                    std::mem::transmute::<__m512i, __m512bh>($v)
                };
            }
            macro_rules! broadcast {
                ($p:expr) => {
                    bh!(_mm512_set1_epi32($p.read_unaligned() as i32))
                };
            }
            for g in 0..pairs / 2 {
                let (w0, w1) = cursor.group(g);
                for i in 0..N {
                    let (x0, x1) = (
                        broadcast!(xp[i].add(2 * g)),
                        broadcast!(xp[i].add(2 * g + 1)),
                    );
                    acc[i] = _mm512_dpbf16_ps(acc[i], bh!(w0), x0);
                    acc[i] = _mm512_dpbf16_ps(acc[i], bh!(w1), x1);
                }
            }
            if pairs % 2 == 1 {
                let g = pairs / 2;
                let (w0, _) = cursor.group(g);
                for i in 0..N {
                    let x0 = broadcast!(xp[i].add(2 * g));
                    acc[i] = _mm512_dpbf16_ps(acc[i], bh!(w0), x0);
                }
            }
            self.store::<1, N>(&[acc], s, i0, y, ldy);
        }
    }

    /// Tile sums `acc` (strips `s..s + S`, input rows `i0..i0 + N`) into `y`, the strips'
    /// real rows only.
    #[inline(always)]
    unsafe fn store<const S: usize, const N: usize>(
        &self,
        acc: &[[__m512; N]; S],
        s: usize,
        i0: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        for (j, acc) in acc.iter().enumerate() {
            let r0 = (s + j) * STRIP;
            let real = STRIP.min(self.rows - r0);
            let mask = if real == STRIP {
                u16::MAX
            } else {
                (1u16 << real) - 1
            };
            for (i, a) in acc.iter().enumerate() {
                // SAFETY: the caller vouches for `y` at every row of the strips, input rows
                // `i0..i0 + N`.
                unsafe { _mm512_mask_storeu_ps(y.add((i0 + i) * ldy + r0), mask, *a) };
            }
        }
    }

    /// Strips `s..s + S`, held plain from `w` on, against input rows `i0..i0 + N`.
    #[inline(always)]
    unsafe fn tile<const S: usize, const N: usize>(
        &self,
        w: *const bf16,
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
            let w: [*const bf16; S] = std::array::from_fn(|j| w.add(j * STRIP * cols));
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
            self.store::<S, N>(&acc, s, i0, y, ldy);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every output equals the f64 sum of the bf16 products, for shapes with a partial strip,
    /// a lone strip at the end and partial input tiles, and packed strips give the same bits;
    /// each row reads back as given.
    #[test]
    fn strips_give_the_plain_product_of_bf16_values() {
        if !super::super::linear_avx512::has_bf16_dot() {
            return;
        }
        let shapes = [
            (16, 2, 1),
            (50, 96, 13),
            (50, 96, 61),
            (33, 40, 30),
            (80, 64, 25),
            (40, 576, 1),
            (40, 578, 7),
        ];
        for (rows, cols, m) in shapes {
            let v = |n: usize, seed: usize| -> Vec<bf16> {
                (0..n)
                    .map(|i| {
                        bf16::from_f32(((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                    })
                    .collect()
            };
            let (mut w, x) = (v(rows * cols, 1), v(m * cols, 2));
            if rows * cols >= 4000 {
                // Eight more exponents in the first strip, the small ones twice: the large
                // ones are then the exceptions the packed strips (`bf16_pack.rs`) patch in,
                // and a wrong patch shows in the sums.
                let extra = [-20, -24, -28, -32, -36, -40]
                    .repeat(2)
                    .into_iter()
                    .chain([10, 30]);
                for (k, e) in extra.enumerate() {
                    w[k * 7] = bf16::from_f32(1.5 * 2f32.powi(e));
                }
                w[rows * cols - 1] = bf16::from_f32(-2f32.powi(-60));
            }
            let ldy = rows + 3;
            // Two calls over halves of the strips, as two team members make them.
            let product = |strips: &Bf16Strips| {
                let mut y = vec![f32::NAN; m * ldy];
                let half = strips.len() / 2;
                // SAFETY: checked `has_bf16_dot`; `y` holds `m` rows of `ldy >= rows`.
                unsafe {
                    strips.product(0..half, &x, m, y.as_mut_ptr(), ldy);
                    strips.product(half..strips.len(), &x, m, y.as_mut_ptr(), ldy);
                }
                y
            };
            let strips = Bf16Strips::with_packing(&w, rows, cols, false);
            let packed = Bf16Strips::with_packing(&w, rows, cols, true);
            assert!(
                matches!(packed.storage, Storage::Packed(_)),
                "{rows}x{cols} packs"
            );
            let y = product(&strips);
            // Packing is lossless: the same bits out.
            let bits = |y: &[f32]| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&product(&packed)), bits(&y), "{rows}x{cols} m {m}");
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                let want: Vec<f32> = w[r * cols..(r + 1) * cols]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                strips.row_f32(r, &mut row);
                assert_eq!(row, want, "row {r}");
                packed.row_f32(r, &mut row);
                assert_eq!(row, want, "packed row {r}");
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
