//! The architectures wayfinder runs, one file each, chosen from `config.json`.
//!
//! All four are the same pre-norm decoder (Llama's: RMSNorm, rotary attention with grouped
//! query heads, SwiGLU MLP), so they share one implementation in [`crate::decoder`]; each file
//! here says how its `config.json` maps onto [`ModelConfig`] and what sets it apart.

mod llama;
mod mistral;
mod qwen2;
mod qwen3;

mod architecture;
mod config;

pub use architecture::Architecture;
pub use config::{HfConfig, ModelConfig};

use crate::error::ModelError;

impl ModelConfig {
    /// Builds the runtime config for whichever architecture `hf` names.
    pub fn from_hf(hf: &HfConfig) -> Result<Self, ModelError> {
        let architecture = Architecture::detect(hf)?;
        let config = architecture.build_config(hf)?;
        config.check()?;
        Ok(config)
    }
}

impl Architecture {
    /// Picks the architecture from `architectures`, else `model_type`.
    pub fn detect(hf: &HfConfig) -> Result<Self, ModelError> {
        let by_class = hf.architectures.iter().find_map(|a| match a.as_str() {
            "LlamaForCausalLM" => Some(Self::Llama),
            "MistralForCausalLM" => Some(Self::Mistral),
            "Qwen2ForCausalLM" => Some(Self::Qwen2),
            "Qwen3ForCausalLM" => Some(Self::Qwen3),
            _ => None,
        });
        let by_type = || match hf.model_type.as_deref() {
            Some("llama") => Some(Self::Llama),
            Some("mistral") => Some(Self::Mistral),
            Some("qwen2") => Some(Self::Qwen2),
            Some("qwen3") => Some(Self::Qwen3),
            _ => None,
        };
        by_class.or_else(by_type).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "architecture {:?} (model_type {:?}); supported: Llama, Mistral, Qwen2, Qwen3",
                hf.architectures,
                hf.model_type.as_deref().unwrap_or("unset")
            ))
        })
    }

    /// The runtime config for this architecture.
    pub fn build_config(self, hf: &HfConfig) -> Result<ModelConfig, ModelError> {
        match self {
            Self::Llama => llama::config(hf),
            Self::Mistral => mistral::config(hf),
            Self::Qwen2 => qwen2::config(hf),
            Self::Qwen3 => qwen3::config(hf),
        }
    }
}
