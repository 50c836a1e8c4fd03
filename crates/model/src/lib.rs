//! # wayfinder-model
//!
//! Real transformer models on the CPU, behind the engine's executor trait. The text side of a
//! model (tokenizer, chat template, stop strings) is `wayfinder-text`'s; this crate is the
//! compute.
//!
//! # Layout
//! - [`arch`]: `config.json` → [`ModelConfig`], one file per architecture (Llama, Mistral,
//!   Qwen2, Qwen3) saying how its config maps onto the shared decoder; [`arch::Architecture`].
//! - [`load`]: a Hugging Face folder or a GGUF file → [`Model`] (weights and text side), with
//!   progress told through a callback; [`load::weights`]: memory-mapped safetensors, sharded or
//!   not, and [`Dtype`]; [`load::gguf`]: GGUF files, weights left quantized in the file's map;
//!   [`load::source`]: the [`load::source::WeightSource`] the decoder reads either through.
//! - [`decoder`]: the shared pre-norm decoder, run over a whole engine step at once;
//!   [`rope`]: rotary embeddings and their scalings.
//! - [`kernels`]: the hot paths — linear layers and their weight layouts, paged attention,
//!   vector kernels with runtime CPU dispatch, the thread team.
//! - [`kv_store`]: keys and values laid out by the block manager's blocks.
//! - [`executor`]: [`ModelExecutor`], the [`wayfinder_core::Executor`] that `wayfinder serve` runs.
//! - [`synth`]: random-weight models written to disk — the published shapes `wayfinder
//!   make-model` writes for benchmarks, and ([`synth::demo`]) the built-in `demo` model.
//!
//! # Dependencies between the rooms
//! ```text
//! executor ─▶ decoder ─▶ kernels, kv_store, rope, arch (config)
//! load ─▶ arch, decoder, load/weights ─▶ kernels (weight layouts)
//! synth ─▶ arch, load/weights (dtype), wayfinder-text (tokenizer)
//! ```
//! No file imports another that imports it back.

pub mod arch;
pub mod decoder;
mod error;
pub mod executor;
pub mod kernels;
pub mod kv_store;
pub mod load;
pub mod rope;
pub mod synth;

pub use arch::ModelConfig;
pub use error::ModelError;
pub use executor::{KvCacheSize, ModelExecutor};
pub use load::weights::{Dtype, LoadProgress};
pub use load::{LoadOptions, Model, load, load_text, load_with_progress};
