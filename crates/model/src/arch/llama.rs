//! Llama (Touvron et al. 2023, arXiv:2302.13971 and arXiv:2307.09288; Llama 3, arXiv:2407.21783).
//!
//! Reference: `transformers/models/llama/modeling_llama.py`. Pre-norm decoder with RMSNorm,
//! rotary attention (grouped-query heads from Llama 2 70B and Llama 3 on), SwiGLU MLP. Llama 3.1
//! adds `rope_scaling` of type `llama3`; `attention_bias` / `mlp_bias` exist for derivatives.
//! SmolLM and SmolLM2 are Llama with tied embeddings.

use super::architecture::Architecture;
use super::config::{HfConfig, ModelConfig};
use crate::error::ModelError;

pub(super) fn config(hf: &HfConfig) -> Result<ModelConfig, ModelError> {
    ModelConfig::base(Architecture::Llama, hf)
}
