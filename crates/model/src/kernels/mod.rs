//! The compute kernels: linear layers, paged attention, vector kernels with runtime CPU
//! dispatch, and the thread team they split their work over.
//!
//! What is public here is what the decoder (and the kernel benchmarks) call, nothing more; the
//! AVX-512 paths are private to the file they accelerate.
//!
//! - `linear.rs` ([`Linear`], [`WeightData`]) and its AVX-512 kernels (`linear_avx512.rs`).
//! - `attention.rs` ([`paged_attention`], [`StepContext`]) and its AVX-512 tiled kernel
//!   (`attention_avx512.rs`); both take [`AttentionParams`] (`attention_params.rs`).
//! - `bf16_strips.rs`: bf16 weights in strips of 16 rows for `vdpbf16ps` (any number of
//!   rows), held packed losslessly in 12 bits a value by `bf16_pack.rs`.
//! - `quant_vnni.rs`: integer dot products on Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 blocks with AVX-512
//!   VNNI, and the tile loop (`Pairs`) the k-quants share.
//! - `quant_strips.rs`: every integer-kernel type repacked in strips of 16 rows, whose
//!   integer product takes 16 rows per instruction (what decode runs on them).
//! - `kquant_avx512.rs`: AVX-512 dequantization of Q4_K and Q6_K blocks; `kquant_vnni.rs`:
//!   integer dot products on Q4_K and Q6_K.
//! - `q8_rows.rs`: activations quantized to 8 bits per block, what the integer products take.
//! - `products.rs`: what both share (the few-rows threshold, the team split, gemm).
//! - `quant.rs` ([`QuantMatrix`], [`QuantType`]): products on GGUF's block-quantized weights,
//!   left in the file's memory map; `quant/integer.rs` its integer path.
//! - `rows.rs` ([`RowKinds`]): which rows of a step take 8-bit activations (generated tokens)
//!   and which f32 (prompt tokens) on quantized weights.
//! - `simd.rs`: [`Isa`] detection, dot products, `exp`, softmax, and the `dispatch!` macro that
//!   compiles a closure for the detected instruction set.
//! - `team.rs`: [`Team`], the executor's pinned worker threads.

mod attention;
mod attention_avx512;
mod attention_params;
mod bf16_pack;
mod bf16_strips;
mod kquant_avx512;
mod kquant_vnni;
mod linear;
mod linear_avx512;
mod products;
mod q8_rows;
mod quant;
mod quant_strips;
mod quant_type;
mod quant_vnni;
mod rows;
mod simd;
mod team;

pub use attention::{MAX_BLOCK, StepContext, paged_attention};
pub use attention_params::AttentionParams;
pub use linear::{Linear, WeightData};
pub use quant::{QuantLayoutError, QuantMatrix, QuantPart, QuantType, SharedBytes, quantize};
pub use rows::RowKinds;
pub use simd::{Isa, exp, silu_mul};
pub use team::Team;
