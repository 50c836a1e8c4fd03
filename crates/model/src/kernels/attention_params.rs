//! The attention shape of a model: what both attention paths (the portable one in
//! `attention.rs`, the AVX-512 one in `attention_avx512.rs`) take, in a file of its own so
//! that neither imports the other back.

/// Attention shape of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionParams {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Attend only to the last `w` positions.
    pub sliding_window: Option<usize>,
}
