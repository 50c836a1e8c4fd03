//! The products of one SmolLM2-135M decode step (every layer's four, then the tied head), on
//! random weights as bf16 (packed and plain), Q8_0 and Q4_1, alternating in one process:
//! tokens/s and the read bandwidth each reaches, to set against `scripts/read_bandwidth.c`.
//! Alternating in one process is what makes a few percent visible on a machine whose
//! bandwidth swings by more than that from minute to minute.
//!
//! `cargo run --release -p wayfinder-model --example decode_products [ROUNDS [ROWS]]`

use std::time::Instant;

use half::bf16;
use wayfinder_model::kernels::{
    Linear, QuantMatrix, QuantPart, QuantType, SharedBytes, Team, WeightData, quantize,
};

/// `(rows, cols)` of one layer's products: qkv, o, gate_up, down.
const LAYER: [(usize, usize); 4] = [(960, 576), (576, 576), (3072, 576), (576, 1536)];
const LAYERS: usize = 30;
const HEAD: (usize, usize) = (49_152, 576);
const TOKENS: usize = 20;

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, m) = (arg(1, 8), arg(2, 1));
    let team = Team::per_core();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let shapes: Vec<(usize, usize)> = (0..LAYERS)
        .flat_map(|_| LAYER)
        .chain(std::iter::once(HEAD))
        .collect();
    let weights: Vec<Vec<f32>> = shapes
        .iter()
        .map(|&(r, c)| (0..r * c).map(|_| normal(&mut seed) * 0.02).collect())
        .collect();
    // Each variant: its layers and the bytes a step reads.
    let bf16_layers = |pack: &str| {
        // SAFETY: single-threaded here; the team's threads do not read the environment.
        unsafe { std::env::set_var("WAYFINDER_BF16_PACK", pack) };
        let layers: Vec<Linear> = weights
            .iter()
            .zip(&shapes)
            .map(|(w, &(r, c))| {
                let w = w.iter().map(|&v| bf16::from_f32(v)).collect();
                Linear::new(WeightData::Bf16(w), r, c, None)
            })
            .collect();
        let bytes = layers.iter().map(Linear::size_in_bytes).sum();
        (layers, bytes)
    };
    let quant_layers = |ty: QuantType| {
        let mut bytes = 0;
        let layers = weights
            .iter()
            .zip(&shapes)
            .map(|(w, &(rows, cols))| {
                let blocks = quantize(ty, w);
                bytes += blocks.len();
                let part = QuantPart {
                    ty,
                    bytes: SharedBytes::new(blocks),
                    offset: 0,
                    rows,
                };
                let matrix = QuantMatrix::new(cols, vec![part]).expect("whole blocks");
                Linear::new(WeightData::Quant(matrix), rows, cols, None)
            })
            .collect();
        (layers, bytes)
    };
    let variants = [
        ("bf16 packed", bf16_layers("1")),
        ("bf16 plain", bf16_layers("0")),
        ("q8_0", quant_layers(QuantType::Q8_0)),
        ("q4_1", quant_layers(QuantType::Q4_1)),
    ];
    drop(weights);
    let x = vec![0.01f32; m * 1536];
    let mut y = vec![0f32; m * HEAD.0];
    for round in 0..rounds {
        for (name, (layers, bytes)) in &variants {
            let start = Instant::now();
            for _ in 0..TOKENS {
                for l in layers {
                    let (k, n) = (l.in_features(), l.out_features());
                    l.forward(&x[..m * k], m, &mut y[..m * n], &team);
                }
            }
            let s = start.elapsed().as_secs_f64() / TOKENS as f64;
            println!(
                "round {round} {name:>11}: {:7.1} tok/s {:5.1} GB/s ({:.1} MB a step)",
                m as f64 / s,
                *bytes as f64 / s / 1e9,
                *bytes as f64 / 1e6
            );
        }
    }
}

/// A standard normal sample (Box–Muller on xorshift).
fn normal(s: &mut u64) -> f32 {
    let mut next = || {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        (*s >> 11) as f64 / (1u64 << 53) as f64
    };
    let (u, v) = (next().max(1e-12), next());
    ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
}
