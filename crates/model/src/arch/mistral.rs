//! Mistral 7B (Jiang et al. 2023, arXiv:2310.06825).
//!
//! Reference: `transformers/models/mistral/modeling_mistral.py`. Llama's decoder with
//! grouped-query attention and, in the first release, sliding-window attention over the last
//! `sliding_window` positions (later releases set it to `null`).

use super::architecture::Architecture;
use super::config::{HfConfig, ModelConfig};
use crate::error::ModelError;

pub(super) fn config(hf: &HfConfig) -> Result<ModelConfig, ModelError> {
    let mut c = ModelConfig::base(Architecture::Mistral, hf)?;
    c.sliding_window = hf.sliding_window;
    Ok(c)
}
