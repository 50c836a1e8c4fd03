//! The products of one SmolLM2-135M decode step at batch 1 (every layer's four, then the tied
//! head), on bf16 weights held packed and plain, alternating in one process: tokens/s and the
//! read bandwidth each reaches, to set against `scripts/read_bandwidth.c`.
//!
//! `cargo run --release -p wayfinder-model --example decode_products [ROUNDS [ROWS]]`

use std::time::Instant;

use half::bf16;
use wayfinder_model::kernels::{Linear, Team, WeightData};

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
    let weights: Vec<Vec<bf16>> = shapes
        .iter()
        .map(|&(r, c)| {
            (0..r * c)
                .map(|_| bf16::from_f32(normal(&mut seed) * 0.02))
                .collect()
        })
        .collect();
    let build = |pack: &str| -> Vec<Linear> {
        // SAFETY: single-threaded here; the team's threads do not read the environment.
        unsafe { std::env::set_var("WAYFINDER_BF16_PACK", pack) };
        weights
            .iter()
            .zip(&shapes)
            .map(|(w, &(r, c))| Linear::new(WeightData::Bf16(w.clone()), r, c, None))
            .collect()
    };
    let variants = [("packed", build("1")), ("plain", build("0"))];
    drop(weights);
    let x = vec![0.01f32; m * 1536];
    let mut y = vec![0f32; m * HEAD.0];
    for round in 0..rounds {
        for (name, layers) in &variants {
            let bytes: usize = layers.iter().map(Linear::size_in_bytes).sum();
            let start = Instant::now();
            for _ in 0..TOKENS {
                for l in layers {
                    let (k, n) = (l.in_features(), l.out_features());
                    l.forward(&x[..m * k], m, &mut y[..m * n], &team);
                }
            }
            let s = start.elapsed().as_secs_f64() / TOKENS as f64;
            println!(
                "round {round} {name:>6}: {:6.1} tok/s {:5.1} GB/s ({:.1} MB)",
                m as f64 / s,
                bytes as f64 / s / 1e9,
                bytes as f64 / 1e6
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
