//! `config.json` of a Hugging Face model folder, turned into the runtime [`ModelConfig`] that
//! every architecture shares.
//!
//! The serde struct ([`HfConfig`]) mirrors the file and tolerates every field we do not use; the
//! architecture files (`arch/*.rs`, through [`ModelConfig::from_hf`]) turn it into a
//! [`ModelConfig`], refusing what they cannot run. The text side of the file (`eos_token_id`) is
//! `wayfinder-text`'s.

use serde::Deserialize;

use super::architecture::Architecture;
use crate::error::ModelError;
use crate::rope::{RopeLayout, RopeScaling};

/// The fields of `config.json` that wayfinder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// E.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// E.g. `llama`, `mistral`, `qwen2`, `qwen3`.
    #[serde(default)]
    pub model_type: Option<String>,
    /// Embedding width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// Rotary base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Rotary scaling, as the file states it.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// Trained context length.
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// Whether the output head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v/o projections (Llama's `attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Sliding-window attention width (Mistral, Qwen2 when enabled).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2's switch for `sliding_window`.
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Activation; only SiLU is supported.
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// The checkpoint's dtype, e.g. `bfloat16`.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_position_embeddings() -> usize {
    2048
}

impl HfConfig {
    /// Parses `config.json` text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Everything the shared decoder needs to know about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Which architecture file built this.
    pub architecture: Architecture,
    /// Embedding width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Rotary base.
    pub rope_theta: f32,
    /// Rotary scaling.
    pub rope_scaling: RopeScaling,
    /// Which head dimensions rotate together (interleaved for GGUF Llama files).
    pub rope_layout: RopeLayout,
    /// Trained context length.
    pub max_position_embeddings: usize,
    /// Output head shares the embedding.
    pub tie_word_embeddings: bool,
    /// Bias on q, k and v.
    pub qkv_bias: bool,
    /// Bias on the attention output projection.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before rotary (Qwen3).
    pub qk_norm: bool,
    /// Attend only to the last `w` positions.
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// The fields every architecture shares; the architecture files adjust the rest.
    pub(crate) fn base(architecture: Architecture, hf: &HfConfig) -> Result<Self, ModelError> {
        if let Some(act) = &hf.hidden_act
            && act != "silu"
        {
            return Err(ModelError::Unsupported(format!(
                "hidden_act {act:?} (only \"silu\" is supported)"
            )));
        }
        let num_heads = hf.num_attention_heads;
        Ok(Self {
            architecture,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads,
            num_kv_heads: hf.num_key_value_heads.unwrap_or(num_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / num_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps as f32,
            rope_theta: hf.rope_theta as f32,
            rope_scaling: RopeScaling::from_hf(hf.rope_scaling.as_ref())?,
            rope_layout: RopeLayout::Halves,
            max_position_embeddings: hf.max_position_embeddings,
            tie_word_embeddings: hf.tie_word_embeddings,
            qkv_bias: hf.attention_bias,
            o_bias: hf.attention_bias,
            mlp_bias: hf.mlp_bias,
            qk_norm: false,
            sliding_window: None,
        })
    }

    pub(crate) fn check(&self) -> Result<(), ModelError> {
        let bad = |what: String| Err(ModelError::InvalidConfig(what));
        if self.hidden_size == 0 || self.num_layers == 0 || self.vocab_size == 0 {
            return bad("hidden_size, num_hidden_layers and vocab_size must be positive".into());
        }
        if self.num_heads == 0
            || self.num_kv_heads == 0
            || !self.num_heads.is_multiple_of(self.num_kv_heads)
        {
            return bad(format!(
                "num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
                self.num_heads, self.num_kv_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head_dim {} must be positive and even",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Width of the query projection.
    pub fn q_size(&self) -> usize {
        self.num_heads * self.head_dim
    }
    /// Width of the key (and value) projection.
    pub fn kv_size(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
