//! # wayfinder-model
//!
//! Real transformer models on the CPU, behind the engine's executor trait.
//!
//! # Layout
//! - [`loader`]: a Hugging Face folder → [`Model`] (weights, tokenizer, template, defaults).
//! - [`config`]: `config.json` → [`ModelConfig`]; [`arch`]: one file per architecture (Llama,
//!   Mistral, Qwen2, Qwen3) saying how its config maps onto the shared decoder.
//! - [`decoder`]: the shared pre-norm decoder, run over a whole engine step at once.
//! - [`linear`], [`attention`], [`simd`]: the hot paths — weight layouts and matmul kernels,
//!   paged attention, vector kernels with runtime CPU dispatch.
//! - [`kv_store`]: keys and values laid out by the block manager's blocks.
//! - [`rope`]: rotary embeddings and their scalings.
//! - [`weights`]: memory-mapped safetensors, sharded or not.
//! - [`executor`]: [`ModelExecutor`], the [`wayfinder_core::Executor`] that `wayfinder serve` runs.
//! - [`tokenizer`], [`chat_template`], [`stop`]: text in and out.
//! - [`demo`], [`synth`]: random-weight models written to disk — the built-in `demo` model and
//!   the published shapes `wayfinder make-model` writes for benchmarks.

pub mod arch;
pub mod attention;
mod attention_avx512;
pub mod chat_template;
pub mod config;
pub mod decoder;
pub mod demo;
mod error;
pub mod executor;
pub mod kv_store;
pub mod linear;
mod linear_avx512;
pub mod loader;
pub mod rope;
pub mod simd;
pub mod stop;
pub mod synth;
pub mod team;
pub mod tokenizer;
pub mod weights;

pub use config::ModelConfig;
pub use error::ModelError;
pub use executor::{KvCacheSize, ModelExecutor};
pub use loader::{LoadOptions, Model, TextParts, load, load_text};
pub use weights::Dtype;
