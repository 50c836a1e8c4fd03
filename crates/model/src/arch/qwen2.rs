//! Qwen2 and Qwen2.5 (Yang et al. 2024, arXiv:2407.10671; arXiv:2412.15115).
//!
//! Reference: `transformers/models/qwen2/modeling_qwen2.py`. Llama's decoder with a bias on the
//! query, key and value projections (none on the output projection). Sliding-window attention
//! applies only when `use_sliding_window` is true; the small models tie their embeddings.

use super::architecture::Architecture;
use super::config::{HfConfig, ModelConfig};
use crate::error::ModelError;

pub(super) fn config(hf: &HfConfig) -> Result<ModelConfig, ModelError> {
    let mut c = ModelConfig::base(Architecture::Qwen2, hf)?;
    c.qkv_bias = true;
    c.o_bias = false;
    if hf.use_sliding_window == Some(true) {
        c.sliding_window = hf.sliding_window;
    }
    Ok(c)
}
