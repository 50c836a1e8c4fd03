//! Tests of `quant_strips.rs`: the strips' products against the row kernels.

use super::*;
use crate::kernels::quant::quantize;

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// Strips give the row kernels' products (the same integers, summed in another order) for
/// both layouts, parts whose rows are not a multiple of 16, and any number of activation
/// rows; lanes past a part's rows stay zero.
#[test]
fn strips_match_the_row_kernels() {
    if !super::super::quant_vnni::available() {
        // No AVX-512 VNNI on this CPU: strips are not used here.
        return;
    }
    for (cols, types) in [
        (7 * 32, &[QuantType::Q4_1, QuantType::Q4_0][..]),
        (7 * 32, &[QuantType::Q8_0]),
        (7 * 32, &[QuantType::Q4_0]),
        (7 * 32, &[QuantType::Q5_0]),
        (7 * 32, &[QuantType::Q5_0, QuantType::Q5_1]),
        (7 * 32, &[QuantType::Q4_1, QuantType::Q8_0]),
        (2 * 256, &[QuantType::Q4K]),
        (2 * 256, &[QuantType::Q4K, QuantType::Q4_1]),
        (2 * 256, &[QuantType::Q8_0, QuantType::Q4K]),
        (2 * 256, &[QuantType::Q6K]),
        (2 * 256, &[QuantType::Q4K, QuantType::Q6K]),
        (2 * 256, &[QuantType::Q6K, QuantType::Q8_0]),
    ] {
        let rows = [21, 16, 3];
        let blocks: Vec<(QuantType, Vec<u8>, usize)> = types
            .iter()
            .cycle()
            .zip(rows)
            .enumerate()
            .map(|(i, (&ty, r))| (ty, quantize(ty, &values(r * cols, i as u32 + 7)), r))
            .collect();
        let mut first = 0;
        let parts: Vec<PartRows<'_>> = blocks
            .iter()
            .map(|(ty, bytes, r)| {
                let p = PartRows {
                    ty: *ty,
                    bytes,
                    rows: *r,
                    first,
                };
                first += r;
                p
            })
            .collect();
        // SAFETY: checked `available` above.
        let strips = unsafe { Strips::new(&parts, cols) }.expect("repackable");
        assert_eq!(strips.len(), 2 + 1 + 1);
        for m in [1, 3, 19] {
            let x = Q8Rows::quantize(&values(m * cols, 99), m, cols).with_lanes();
            for s in 0..strips.len() {
                let mut lanes = vec![[f32::NAN; STRIP]; m];
                // SAFETY: as above.
                let (r0, real) = unsafe { strips.dot(s, &x, &mut lanes) };
                let part = parts
                    .iter()
                    .find(|p| r0 < p.first + p.rows)
                    .expect("a strip lies in a part");
                let row_bytes = cols / part.ty.block_values() * part.ty.block_bytes();
                #[allow(clippy::needless_range_loop)] // `r` picks a lane and a weight row
                for r in 0..STRIP {
                    let mut want = vec![0f32; m];
                    if r < real {
                        let at = (r0 - part.first + r) * row_bytes;
                        let row = &part.bytes[at..at + row_bytes];
                        // SAFETY: as above; the row holds `cols / 32` blocks.
                        unsafe {
                            if matches!(part.ty, QuantType::Q4K | QuantType::Q6K) {
                                super::super::kquant_vnni::row_dot(part.ty, row, &x, &mut want)
                            } else {
                                super::super::quant_vnni::row_dot(part.ty, row, &x, &mut want)
                            }
                        };
                    }
                    for (j, &w) in want.iter().enumerate() {
                        let g = lanes[j][r];
                        assert!(
                            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                            "{types:?} strip {s} row {r} x {j}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
