//! [`WeightSource`]: where the decoder's weights come from — a safetensors checkpoint
//! ([`super::weights::WeightLoader`]) or a GGUF file ([`super::gguf::GgufWeights`]). The decoder
//! asks for tensors by their Hugging Face names (`model.layers.0.self_attn.q_proj`); each source
//! maps them onto its own names and layouts.

use crate::error::ModelError;
use crate::kernels::Linear;

/// The tensors of a checkpoint, by Hugging Face name.
pub trait WeightSource {
    /// Whether the tensor `name` (e.g. `lm_head.weight`) exists.
    fn contains(&self, name: &str) -> bool;

    /// The 1-D tensor `name` (with its `.weight`/`.bias` suffix) as f32.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError>;

    /// Several layers with the same input stacked into one (e.g. q, k, v), each `(prefix,
    /// rows)` naming `{prefix}.weight` (`[rows, cols]`) and, with `bias`, `{prefix}.bias`:
    /// their outputs are concatenated in order.
    fn stacked_linear(
        &self,
        parts: &[(&str, usize)],
        cols: usize,
        bias: bool,
    ) -> Result<Linear, ModelError>;

    /// `{prefix}.weight` (`[rows, cols]`) and, with `bias`, `{prefix}.bias`, as a layer.
    fn linear(
        &self,
        prefix: &str,
        rows: usize,
        cols: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        self.stacked_linear(&[(prefix, rows)], cols, bias)
    }
}
