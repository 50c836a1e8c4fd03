//! Kernel micro-benchmarks at SmolLM2-135M's shapes.
//!
//! `cargo bench -p wayfinder-model --bench kernels`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use wayfinder_model::kernels::Team;
use wayfinder_model::kernels::{Linear, WeightData};

fn linear(c: &mut Criterion) {
    let team = Team::per_core();
    // (name, out, in): the fused gate+up projection and the tied output head.
    for (name, rows, cols) in [("gate_up", 3072, 576), ("lm_head", 49_152, 576)] {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| (i % 17) as f32 / 17.0 - 0.5)
            .collect();
        let layers = [
            (
                "f32",
                Linear::new(WeightData::F32(w.clone()), rows, cols, None),
            ),
            (
                "bf16",
                Linear::new(
                    WeightData::Bf16(w.iter().map(|&v| bf16::from_f32(v)).collect()),
                    rows,
                    cols,
                    None,
                ),
            ),
        ];
        for (dtype, layer) in &layers {
            for m in [1, 8, 32, 512] {
                let x = vec![0.25f32; m * cols];
                let mut y = vec![0f32; m * rows];
                let mut g = c.benchmark_group(format!("linear/{name}/{dtype}"));
                g.throughput(Throughput::Bytes(layer.size_in_bytes() as u64));
                g.bench_function(format!("m{m}"), |b| {
                    b.iter(|| layer.forward(black_box(&x), m, &mut y, &team));
                });
                g.finish();
            }
        }
    }
}

criterion_group!(benches, linear);
criterion_main!(benches);
