//! The quantized products against a plain f64 dequantize-and-dot.
//!
//! The reference decodes Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K from ggml's block layouts
//! written out here (ggml-quants.c, `dequantize_row_*`); Q5_0, Q5_1, Q2_K and Q3_K with
//! candle's scalar decoders, in f64. The kernels' own decoders (AVX-512 for Q4_0 … Q8_0, Q4_K
//! and Q6_K where the CPU has it, candle's otherwise) are checked against it.

use half::f16;

use super::*;

fn f16_at(b: &[u8], i: usize) -> f64 {
    f64::from(f16::from_le_bytes([b[i], b[i + 1]]).to_f32())
}

/// ggml's `get_scale_min_k4`.
fn scale_min_k4(j: usize, q: &[u8]) -> (f64, f64) {
    if j < 4 {
        (f64::from(q[j] & 63), f64::from(q[j + 4] & 63))
    } else {
        let sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (f64::from(sc), f64::from(m))
    }
}

/// One block of `ty` decoded by hand, or `None` where the reference uses candle's decoder.
fn reference_block(ty: QuantType, b: &[u8]) -> Option<Vec<f64>> {
    let mut y = Vec::new();
    match ty {
        QuantType::Q4_0 => {
            let d = f16_at(b, 0);
            let qs = &b[2..18];
            y.extend(qs.iter().map(|q| (f64::from(q & 0xF) - 8.0) * d));
            y.extend(qs.iter().map(|q| (f64::from(q >> 4) - 8.0) * d));
        }
        QuantType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            let qs = &b[4..20];
            y.extend(qs.iter().map(|q| f64::from(q & 0xF) * d + m));
            y.extend(qs.iter().map(|q| f64::from(q >> 4) * d + m));
        }
        QuantType::Q8_0 => {
            let d = f16_at(b, 0);
            y.extend(b[2..34].iter().map(|&q| f64::from(q as i8) * d));
        }
        QuantType::Q4K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (scales, qs) = (&b[4..16], &b[16..144]);
            for (g, q) in qs.chunks_exact(32).enumerate() {
                let (s1, m1) = scale_min_k4(2 * g, scales);
                let (s2, m2) = scale_min_k4(2 * g + 1, scales);
                y.extend(q.iter().map(|v| d * s1 * f64::from(v & 0xF) - dmin * m1));
                y.extend(q.iter().map(|v| d * s2 * f64::from(v >> 4) - dmin * m2));
            }
        }
        QuantType::Q5K => {
            let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
            let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
            for (g, q) in qs.chunks_exact(32).enumerate() {
                let (s1, m1) = scale_min_k4(2 * g, scales);
                let (s2, m2) = scale_min_k4(2 * g + 1, scales);
                let (u1, u2) = (1u8 << (2 * g), 2u8 << (2 * g));
                for (l, v) in q.iter().enumerate() {
                    let hi = if qh[l] & u1 != 0 { 16.0 } else { 0.0 };
                    y.push(d * s1 * (f64::from(v & 0xF) + hi) - dmin * m1);
                }
                for (l, v) in q.iter().enumerate() {
                    let hi = if qh[l] & u2 != 0 { 16.0 } else { 0.0 };
                    y.push(d * s2 * (f64::from(v >> 4) + hi) - dmin * m2);
                }
            }
        }
        QuantType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = f16_at(b, 208);
            let mut out = [0f64; 256];
            for half in 0..2 {
                let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
                let y = &mut out[128 * half..];
                let s = |i: usize| f64::from(sc[i] as i8);
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = i32::from((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                    let q2 = i32::from((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    let q3 = i32::from((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    let q4 = i32::from((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * s(is) * f64::from(q1);
                    y[l + 32] = d * s(is + 2) * f64::from(q2);
                    y[l + 64] = d * s(is + 4) * f64::from(q3);
                    y[l + 96] = d * s(is + 6) * f64::from(q4);
                }
            }
            y.extend(out);
        }
        _ => return None,
    }
    Some(y)
}

/// The whole matrix in f64, decoded block by block.
fn reference_matrix(ty: QuantType, bytes: &[u8]) -> Vec<f64> {
    bytes
        .chunks_exact(ty.block_bytes())
        .flat_map(|b| {
            reference_block(ty, b).unwrap_or_else(|| {
                let mut out = vec![0f32; ty.block_values()];
                reference_dequantize(ty, b, &mut out);
                out.into_iter().map(f64::from).collect()
            })
        })
        .collect()
}

const ALL: [QuantType; 13] = [
    QuantType::F32,
    QuantType::F16,
    QuantType::Bf16,
    QuantType::Q4_0,
    QuantType::Q4_1,
    QuantType::Q5_0,
    QuantType::Q5_1,
    QuantType::Q8_0,
    QuantType::Q2K,
    QuantType::Q3K,
    QuantType::Q4K,
    QuantType::Q5K,
    QuantType::Q6K,
];

fn values(n: usize, seed: u64) -> Vec<f32> {
    // A small LCG: deterministic, varied signs and magnitudes.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32 - 0.5) * 2.0
        })
        .collect()
}

#[test]
fn hand_decoders_agree_with_the_kernels_decoder() {
    for ty in ALL {
        let cols = 2 * 256;
        let bytes = quantize(ty, &values(cols, 7));
        let m = QuantMatrix::new(cols, vec![part(ty, bytes.clone(), 0, 1)]).expect("layout");
        let mut row = vec![0f32; cols];
        m.dequantize_row(0, &mut row);
        for (i, (&g, e)) in row.iter().zip(reference_matrix(ty, &bytes)).enumerate() {
            assert!(
                (f64::from(g) - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{ty:?} [{i}]"
            );
        }
    }
}

#[test]
fn every_type_matches_a_plain_product_over_awkward_shapes() {
    let team = Team::new(3);
    let isa = Isa::detect();
    for ty in ALL {
        let cols = if ty.block_values() == 256 { 512 } else { 96 };
        for (rows, split) in [(1, 1), (5, 2), (70, 40), (200, 129)] {
            let bytes = quantize(ty, &values(rows * cols, rows as u64));
            let want_w = reference_matrix(ty, &bytes);
            // Two parts, the second at an offset into a larger buffer, as stacked q/k/v are.
            let row_bytes = cols / ty.block_values() * ty.block_bytes();
            let split = split.min(rows);
            let (a, b) = bytes.split_at(split * row_bytes);
            let mut padded = vec![0u8; 8];
            padded.extend_from_slice(b);
            let mut parts = vec![part(ty, a.to_vec(), 0, split)];
            if rows > split {
                parts.push(part(ty, padded, 8, rows - split));
            }
            let w = QuantMatrix::new(cols, parts).expect("layout");
            // One activation level (the default) and two.
            let two = w.clone().with_activation_levels(2);
            for (w, m) in [1, 3, 9, 16, 17, SMALL_M, SMALL_M + 1, 40]
                .into_iter()
                .flat_map(|m| [(&w, m), (&two, m)])
            {
                let x = values(m * cols, 100 + m as u64);
                let mut y = vec![0f32; m * rows];
                w.forward(&x, m, &mut y, &team, isa);
                // Integer kernels multiply the activations as quantized to 8 bits: the
                // reference takes the same values.
                let x = as_multiplied(w, &x, m, cols);
                for i in 0..m {
                    for j in 0..rows {
                        let e: f64 = (0..cols)
                            .map(|k| f64::from(x[i * cols + k]) * want_w[j * cols + k])
                            .sum();
                        let g = f64::from(y[i * rows + j]);
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "{ty:?} rows {rows} m {m} [{i}, {j}]: {g} vs {e}"
                        );
                    }
                }
            }
        }
    }
}

fn part(ty: QuantType, bytes: Vec<u8>, offset: usize, rows: usize) -> QuantPart {
    QuantPart {
        ty,
        bytes: SharedBytes::new(bytes),
        offset,
        rows,
    }
}

#[test]
fn parts_of_different_types_stack() {
    let team = Team::new(2);
    let cols = 256;
    let types = [
        QuantType::Q4K,
        QuantType::Q6K,
        QuantType::F16,
        QuantType::Q8_0,
    ];
    let mut parts = Vec::new();
    let mut want_w = Vec::new();
    for (i, &ty) in types.iter().enumerate() {
        let bytes = quantize(ty, &values(3 * cols, i as u64));
        want_w.extend(reference_matrix(ty, &bytes));
        parts.push(part(ty, bytes, 0, 3));
    }
    let w = QuantMatrix::new(cols, parts).expect("layout");
    assert_eq!(w.rows(), 12);
    assert_eq!(w.part_types().collect::<Vec<_>>(), types);
    for m in [1, SMALL_M + 3] {
        let x = values(m * cols, 9);
        let mut y = vec![0f32; m * 12];
        w.forward(&x, m, &mut y, &team, Isa::detect());
        for i in 0..m {
            for j in 0..12 {
                let e: f64 = (0..cols)
                    .map(|k| f64::from(x[i * cols + k]) * want_w[j * cols + k])
                    .sum();
                let g = f64::from(y[i * 12 + j]);
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "[{i}, {j}]");
            }
        }
    }
}

/// The activations as the kernel for `m` rows multiplies them.
fn as_multiplied(w: &QuantMatrix, x: &[f32], m: usize, cols: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if w.quantizes_activations(m) {
        use super::super::quant_vnni::Q8Rows;
        if w.activation_levels() == 1 {
            return Q8Rows::quantize(x, m, cols).dequantized();
        }
        let both = Q8Rows::quantize_two_levels(x, m, cols).dequantized();
        return both
            .chunks_exact(2 * cols)
            .flat_map(|pair| (0..cols).map(move |k| pair[k] + pair[cols + k]))
            .collect();
    }
    let _ = (w, m, cols);
    x.to_vec()
}

#[cfg(target_arch = "x86_64")]
#[test]
fn integer_kernels_cover_their_types_and_stay_close_to_f32() {
    if !super::super::quant_vnni::available() {
        // No AVX-512 VNNI on this CPU: the integer kernels are not used here.
        return;
    }
    let team = Team::new(2);
    for ty in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ] {
        // 7 blocks: pairs and an odd tail block (2 blocks of 256 for the k-quants).
        let cols = if ty.block_values() == 256 {
            512
        } else {
            7 * 32
        };
        let rows = 37;
        let bytes = quantize(ty, &values(rows * cols, 3));
        let want_w = reference_matrix(ty, &bytes);
        let w = QuantMatrix::new(cols, vec![part(ty, bytes, 0, rows)]).expect("layout");
        let max = w.integer_max_m();
        assert!(w.quantizes_activations(1) && w.quantizes_activations(max));
        assert!(!w.quantizes_activations(max + 1));
        // One and two rows take the grouped kernels (37 rows: groups and a remainder).
        for m in [1, 2, 5] {
            let x = values(m * cols, 11);
            let mut y = vec![0f32; m * rows];
            w.forward(&x, m, &mut y, &team, Isa::detect());
            // Against f32 activations the 8-bit rounding shows, but only a little.
            for i in 0..m {
                for j in 0..rows {
                    let e: f64 = (0..cols)
                        .map(|k| f64::from(x[i * cols + k]) * want_w[j * cols + k])
                        .sum();
                    let norm: f64 = (0..cols)
                        .map(|k| (f64::from(x[i * cols + k]) * want_w[j * cols + k]).abs())
                        .sum();
                    let g = f64::from(y[i * rows + j]);
                    assert!(
                        (g - e).abs() <= 0.01 * norm,
                        "{ty:?} m = {m} [{i}, {j}]: {g} vs {e}"
                    );
                }
            }
        }
    }
    // Mixed with a type that has no integer kernel, the matrix keeps the f32 path.
    let cols = 256;
    let parts = vec![
        part(
            QuantType::Q4_1,
            quantize(QuantType::Q4_1, &values(cols, 1)),
            0,
            1,
        ),
        part(
            QuantType::Q3K,
            quantize(QuantType::Q3K, &values(cols, 2)),
            0,
            1,
        ),
    ];
    let mixed = QuantMatrix::new(cols, parts).expect("layout");
    assert!(!mixed.quantizes_activations(1));
}

#[test]
fn bad_layouts_are_refused() {
    let ty = QuantType::Q4_1;
    let bytes = quantize(ty, &values(64, 1));
    assert!(matches!(
        QuantMatrix::new(48, vec![part(ty, bytes.clone(), 0, 1)]),
        Err(QuantLayoutError::PartialBlock { cols: 48, .. })
    ));
    assert!(matches!(
        QuantMatrix::new(32, vec![part(ty, bytes.clone(), 0, 3)]),
        Err(QuantLayoutError::OutOfBounds { .. })
    ));
    assert!(matches!(
        QuantMatrix::new(32, vec![part(ty, bytes.clone(), 1, 1)]),
        Err(QuantLayoutError::Misaligned(1))
    ));
    assert!(matches!(
        QuantMatrix::new(32, vec![]),
        Err(QuantLayoutError::Empty)
    ));
    assert!(QuantMatrix::new(32, vec![part(ty, bytes, 0, 2)]).is_ok());
}

#[cfg(target_arch = "x86_64")]
#[test]
fn the_vector_dequantization_equals_the_reference_decoders() {
    if !super::super::quant_vnni::available() {
        return;
    }
    for ty in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
    ] {
        let cols = 5 * 32;
        let bytes = quantize(ty, &values(cols, 4));
        let mut got = vec![0f32; cols];
        // SAFETY: `available()` held; the type is supported; `bytes` holds 5 blocks.
        unsafe { super::super::quant_vnni::dequantize(ty, &bytes, &mut got) };
        for (i, (g, e)) in got.iter().zip(reference_matrix(ty, &bytes)).enumerate() {
            assert!(
                (f64::from(*g) - e).abs() <= 1e-6 * e.abs().max(1.0),
                "{ty:?} [{i}]"
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn grouped_weight_rows_give_the_single_row_products_bit_for_bit() {
    use super::super::quant_vnni::{Q8Rows, group_width};
    use super::integer::{integer_row_dot, integer_rows_dot};
    if !super::super::quant_vnni::available() {
        return;
    }
    for ty in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_0,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q6K,
    ] {
        // An odd tail block where the type allows one.
        let cols = if ty.block_values() == 256 {
            512
        } else {
            7 * 32
        };
        let row_bytes = quantize(ty, &values(cols, 1)).len();
        let bytes = quantize(ty, &values(4 * cols, 5));
        let rows: Vec<&[u8]> = bytes.chunks_exact(row_bytes).collect();
        for n in 1..=4 {
            let x = Q8Rows::quantize(&values(n * cols, 9 + n as u64), n, cols).with_lanes();
            let mut single = vec![0f32; 4 * n];
            for (r, o) in rows.iter().zip(single.chunks_exact_mut(n)) {
                // SAFETY: `available()` held; the type is supported; a row holds its blocks.
                unsafe { integer_row_dot(ty, r, &x, o) };
            }
            let mut four = vec![0f32; 4 * n];
            let mut two = vec![0f32; 4 * n];
            // SAFETY: as above, with `n` within each group's width.
            unsafe {
                if n <= group_width(4) {
                    integer_rows_dot(ty, [rows[0], rows[1], rows[2], rows[3]], &x, &mut four);
                    assert_eq!(four, single, "{ty:?}, 4 rows × {n}");
                }
                integer_rows_dot(ty, [rows[0], rows[1]], &x, &mut two[..2 * n]);
                integer_rows_dot(ty, [rows[2], rows[3]], &x, &mut two[2 * n..]);
            }
            assert_eq!(two, single, "{ty:?}, 2 rows × {n}");
        }
    }
}

#[test]
fn matrices_take_one_level_of_activations_unless_told_two() {
    if std::env::var_os("WAYFINDER_ACTIVATION_LEVELS").is_some() {
        // Overridden for a comparison run.
        return;
    }
    let ty = QuantType::Q4_1;
    let w =
        QuantMatrix::new(64, vec![part(ty, quantize(ty, &values(128, 2)), 0, 2)]).expect("layout");
    assert_eq!(w.activation_levels(), 1);
    assert_eq!(w.integer_max_m(), 16);
    let two = w.with_activation_levels(2);
    assert_eq!(two.activation_levels(), 2);
    assert_eq!(two.integer_max_m(), 8);
}

/// Generated tokens' rows take 8-bit activations, each computed bit for bit as it would be
/// alone, whatever rows share its product; prompt tokens' rows take f32 activations (the plain
/// product to f32 rounding, whichever f32 kernel their number picks).
#[test]
fn each_row_computes_alike_whatever_rows_share_its_product() {
    use super::super::{Linear, RowKinds, WeightData};
    let team = Team::new(2);
    let (cols, rows) = (256, 40);
    for ty in [
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
    ] {
        let bytes = quantize(ty, &values(rows * cols, 5));
        let want_w = reference_matrix(ty, &bytes);
        let w = QuantMatrix::new(cols, vec![part(ty, bytes, 0, rows)]).expect("layout");
        let integer = w.quantizes_activations(1);
        let layer = Linear::new(WeightData::Quant(w.clone()), rows, cols, None);
        // 40 rows: more generated rows than one integer product takes, and prompt rows
        // beyond the few-rows threshold, interleaved.
        let m = 40;
        let flags: Vec<bool> = (0..m).map(|i| i % 3 != 0).collect();
        let kinds = RowKinds::from_flags(flags.clone());
        let x = values(m * cols, 13);
        let mut y = vec![0f32; m * rows];
        layer.forward_rows(&x, &kinds, &mut y, &team);
        for (i, &generated) in flags.iter().enumerate() {
            let (xi, yi) = (&x[i * cols..(i + 1) * cols], &y[i * rows..(i + 1) * rows]);
            if generated && integer {
                let mut alone = vec![0f32; rows];
                layer.forward_rows(xi, &RowKinds::uniform(1, true), &mut alone, &team);
                assert_eq!(yi, &alone[..], "{ty:?} row {i}");
                let mut direct = vec![0f32; rows];
                w.forward_generated(xi, 1, &mut direct, &team, Isa::detect());
                assert_eq!(alone, direct, "{ty:?} row {i}");
                continue;
            }
            for (j, &g) in yi.iter().enumerate() {
                let e: f64 = (0..cols)
                    .map(|k| f64::from(xi[k]) * want_w[j * cols + k])
                    .sum();
                let g = f64::from(g);
                assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{ty:?} [{i}, {j}]");
            }
        }
    }
}
