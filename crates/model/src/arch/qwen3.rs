//! Qwen3 dense models (Qwen Team 2025, arXiv:2505.09388).
//!
//! Reference: `transformers/models/qwen3/modeling_qwen3.py`. Llama's decoder without q/k/v bias
//! but with a per-head RMSNorm on queries and keys (`q_norm`, `k_norm`) before the rotary
//! embedding, and an explicit `head_dim` that need not equal `hidden_size / heads`.

use super::architecture::Architecture;
use super::config::{HfConfig, ModelConfig};
use crate::error::ModelError;

pub(super) fn config(hf: &HfConfig) -> Result<ModelConfig, ModelError> {
    let mut c = ModelConfig::base(Architecture::Qwen3, hf)?;
    c.qk_norm = true;
    if hf.use_sliding_window == Some(true) {
        c.sliding_window = hf.sliding_window;
    }
    Ok(c)
}
