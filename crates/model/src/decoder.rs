//! The pre-norm decoder shared by Llama, Mistral, Qwen2 and Qwen3, run over a whole engine step.
//!
//! ```text
//! x = embed(tokens)                                   [T, hidden], every token of every request
//! for each layer:
//!     h = rms_norm(x)
//!     q, k, v = h · W_qkvᵀ (+ b)                      one fused matmul
//!     (Qwen3) q, k = rms_norm per head
//!     q, k = rope(q, k, each token's own position)
//!     KV store[slot of each token] = k, v
//!     x += paged_attention(q, KV, block tables) · W_oᵀ
//!     h = rms_norm(x)
//!     x += (silu(h · W_gateᵀ) ⊙ h · W_upᵀ) · W_downᵀ   gate and up fused
//! logits = rms_norm(x[each token of Batch::logits_tokens]) · W_headᵀ   (the last of each
//!          request that samples, and prompt tokens whose logprobs are owed)
//! ```
//!
//! Linear layers run over all `T` tokens at once (on quantized weights, prompt tokens and
//! generated tokens each in one product of their own precision: `kernels/rows.rs`); only
//! attention is per request. Positions,
//! slots and block tables come from the engine's [`Batch`], so prefill chunks, decode tokens and
//! recomputation mix freely in one step.

use wayfinder_core::Batch;

use crate::arch::ModelConfig;
use crate::error::ModelError;
use crate::kernels::{
    AttentionParams, Isa, Linear, RowKinds, StepContext, Team, paged_attention, silu_mul,
};
use crate::kv_store::PagedKvStore;
use crate::load::source::WeightSource;
use crate::rope::RotaryTable;

/// Token rows per parallel task in the element-wise passes.
const ROWS_PER_TASK: usize = 8;

/// One decoder layer.
#[derive(Debug)]
struct Layer {
    input_norm: Vec<f32>,
    /// q, k and v stacked: `[q_size + 2 · kv_size, hidden]`.
    qkv: Linear,
    q_norm: Option<Vec<f32>>,
    k_norm: Option<Vec<f32>>,
    o: Linear,
    post_norm: Vec<f32>,
    /// gate and up stacked: `[2 · intermediate, hidden]`.
    gate_up: Linear,
    down: Linear,
}

/// A loaded decoder-only transformer.
#[derive(Debug)]
pub struct Decoder {
    config: ModelConfig,
    /// `[vocab, hidden]`; also the output head when embeddings are tied.
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    /// `None` when tied to `embed`.
    lm_head: Option<Linear>,
    rotary: RotaryTable,
    attention: AttentionParams,
    isa: Isa,
    /// Prompt tokens take f32 activations against dequantized weights
    /// (`WAYFINDER_F32_PROMPTS=1`) instead of the integer path, for measuring what 8-bit
    /// activations cost in fidelity; see `kernels/rows.rs`.
    f32_prompts: bool,
}

impl Decoder {
    /// Loads every weight named by the Hugging Face convention, checking shapes against
    /// `config`. Rotary tables cover `max_positions`.
    pub fn load(
        config: ModelConfig,
        weights: &dyn WeightSource,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let c = &config;
        let (h, q, kv, inter) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let embed = weights.linear("model.embed_tokens", c.vocab_size, h, false)?;
        let mut layers = Vec::with_capacity(c.num_layers);
        for i in 0..c.num_layers {
            let p = format!("model.layers.{i}");
            let attn = |n: &str| format!("{p}.self_attn.{n}");
            let mlp = |n: &str| format!("{p}.mlp.{n}");
            let (qn, kn, vn) = (attn("q_proj"), attn("k_proj"), attn("v_proj"));
            let norm = |n: &str, len| weights.vector(&format!("{n}.weight"), len);
            let qk_norm = |n: &str| c.qk_norm.then(|| norm(&attn(n), c.head_dim)).transpose();
            layers.push(Layer {
                input_norm: norm(&format!("{p}.input_layernorm"), h)?,
                qkv: weights.stacked_linear(&[(&qn, q), (&kn, kv), (&vn, kv)], h, c.qkv_bias)?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                o: weights.linear(&attn("o_proj"), h, q, c.o_bias)?,
                post_norm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                gate_up: weights.stacked_linear(
                    &[(&mlp("gate_proj"), inter), (&mlp("up_proj"), inter)],
                    h,
                    c.mlp_bias,
                )?,
                down: weights.linear(&mlp("down_proj"), h, inter, c.mlp_bias)?,
            });
        }
        let norm = weights.vector("model.norm.weight", h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(weights.linear("lm_head", c.vocab_size, h, false)?)
        };
        let freq_factors = if weights.contains("rope_freqs.weight") {
            Some(weights.vector("rope_freqs.weight", c.head_dim / 2)?)
        } else {
            None
        };
        let rotary = RotaryTable::new(
            c.rope_scaling,
            c.rope_layout,
            c.head_dim,
            c.rope_theta,
            max_positions,
            freq_factors.as_deref(),
        );
        let attention = AttentionParams {
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            sliding_window: c.sliding_window,
        };
        Ok(Self {
            config,
            embed,
            layers,
            norm,
            lm_head,
            rotary,
            attention,
            isa: Isa::detect(),
            f32_prompts: std::env::var("WAYFINDER_F32_PROMPTS").is_ok_and(|v| v == "1"),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions the rotary tables cover.
    pub fn max_positions(&self) -> usize {
        self.rotary.max_positions()
    }

    /// Bytes of weights held.
    pub fn weight_bytes(&self) -> usize {
        let l = |x: &Linear| x.size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|y| l(&y.qkv) + l(&y.o) + l(&y.gate_up) + l(&y.down))
            .sum();
        layers + l(&self.embed) + self.lm_head.as_ref().map_or(0, l)
    }

    /// Runs one step: writes its tokens' keys and values into `kv` and returns the logits rows
    /// (`[requests that sample, vocab]`) in batch order.
    pub fn forward(&self, batch: &Batch, kv: &mut PagedKvStore, team: &Team) -> Vec<f32> {
        let c = &self.config;
        let (t, h) = (batch.num_tokens(), c.hidden_size);
        let (q_size, kv_size, inter) = (c.q_size(), c.kv_size(), c.intermediate_size);
        let step = StepContext::new(batch, *kv.geometry(), self.isa, team);
        let kinds = RowKinds::from_batch(batch, !self.f32_prompts);

        let mut x = vec![0f32; t * h];
        for (row, &token) in x.chunks_exact_mut(h).zip(&batch.token_ids) {
            self.embed.row_f32(token as usize, row);
        }
        let mut xn = vec![0f32; t * h];
        let mut qkv = vec![0f32; t * (q_size + 2 * kv_size)];
        let (mut q, mut k, mut v) = (
            vec![0f32; t * q_size],
            vec![0f32; t * kv_size],
            vec![0f32; t * kv_size],
        );
        let mut attn = vec![0f32; t * q_size];
        let mut proj = vec![0f32; t * h];
        let mut gate_up = vec![0f32; t * 2 * inter];
        let mut act = vec![0f32; t * inter];

        for (i, layer) in self.layers.iter().enumerate() {
            rms_norm_rows(&x, &mut xn, &layer.input_norm, c.rms_norm_eps, team);
            layer.qkv.forward_rows(&xn, &kinds, &mut qkv, team);
            self.norm_and_rotate(&mut qkv, layer, &batch.positions, team);
            split_qkv(&qkv, &mut q, &mut k, &mut v, q_size);
            kv.write(i, &batch.slot_mapping, &k, &v);
            paged_attention(&q, &mut attn, &step, kv.layer(i), &self.attention);
            layer.o.forward_rows(&attn, &kinds, &mut proj, team);
            add_rows(&mut x, &proj, team);

            rms_norm_rows(&x, &mut xn, &layer.post_norm, c.rms_norm_eps, team);
            layer.gate_up.forward_rows(&xn, &kinds, &mut gate_up, team);
            swiglu_rows(&gate_up, &mut act, inter, self.isa, team);
            layer.down.forward_rows(&act, &kinds, &mut proj, team);
            add_rows(&mut x, &proj, team);
        }

        let last: Vec<usize> = batch.logits_tokens().collect();
        let mut hidden = vec![0f32; last.len() * h];
        for (dst, &row) in hidden.chunks_exact_mut(h).zip(&last) {
            rms_norm(&x[row * h..(row + 1) * h], dst, &self.norm, c.rms_norm_eps);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; last.len() * c.vocab_size];
        head.forward_rows(&hidden, &kinds.select(&last), &mut logits, team);
        logits
    }

    /// Applies the q/k norms and the rotary embedding in place, token by token, on the fused
    /// `[q | k | v]` rows.
    fn norm_and_rotate(&self, qkv: &mut [f32], layer: &Layer, positions: &[u32], team: &Team) {
        let c = &self.config;
        let (qs, ks) = (c.q_size(), c.kv_size());
        let (eps, hd) = (c.rms_norm_eps, c.head_dim);
        let width = qs + 2 * ks;
        team.chunks(qkv, ROWS_PER_TASK * width, &|chunk, rows| {
            for (r, row) in rows.chunks_exact_mut(width).enumerate() {
                let pos = positions[chunk * ROWS_PER_TASK + r] as usize;
                let (qt, rest) = row.split_at_mut(qs);
                let kt = &mut rest[..ks];
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    for head in qt.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, qn, eps);
                    }
                    for head in kt.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, kn, eps);
                    }
                }
                self.rotary.apply(qt, pos);
                self.rotary.apply(kt, pos);
            }
        });
    }
}

/// Splits fused `[q | k | v]` rows into the three buffers (`[tokens, q_size]`, `[tokens,
/// kv_size]` twice).
fn split_qkv(qkv: &[f32], q: &mut [f32], k: &mut [f32], v: &mut [f32], q_size: usize) {
    let kv_size = (qkv.len() / (q.len() / q_size).max(1) - q_size) / 2;
    let rows = qkv.chunks_exact(q_size + 2 * kv_size);
    let outs = q
        .chunks_exact_mut(q_size)
        .zip(k.chunks_exact_mut(kv_size))
        .zip(v.chunks_exact_mut(kv_size));
    for (src, ((qt, kt), vt)) in rows.zip(outs) {
        qt.copy_from_slice(&src[..q_size]);
        kt.copy_from_slice(&src[q_size..q_size + kv_size]);
        vt.copy_from_slice(&src[q_size + kv_size..]);
    }
}

/// `out = x / rms(x) · weight`.
fn rms_norm(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for ((o, xi), w) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * inv * w;
    }
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let inv = inverse_rms(x, eps);
    for (xi, w) in x.iter_mut().zip(weight) {
        *xi *= inv * w;
    }
}

/// `1 / sqrt(mean(x²) + eps)` as ggml's `rms_norm` computes it: each square rounded to f32,
/// summed in f64 (ggml's sum is a `ggml_float`), the mean rounded to f32. Eight lanes of f64
/// at a time, which the compiler turns into vector adds: the sum's order differs from ggml's
/// only in f64 roundings, far below the f32 result's. (A sequential f32 sum, one dependent add
/// per value, was 2.5 % of a 512-token BF16 prefill.)
fn inverse_rms(x: &[f32], eps: f32) -> f32 {
    let mut lanes = [0f64; 8];
    let chunks = x.chunks_exact(8);
    let tail: f64 = chunks.remainder().iter().map(|&v| f64::from(v * v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v * v);
        }
    }
    let mean = ((lanes.iter().sum::<f64>() + tail) / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

fn rms_norm_rows(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32, team: &Team) {
    let h = weight.len();
    team.chunks(out, ROWS_PER_TASK * h, &|chunk, rows| {
        let src = &x[chunk * ROWS_PER_TASK * h..];
        for (o, xi) in rows.chunks_exact_mut(h).zip(src.chunks_exact(h)) {
            rms_norm(xi, o, weight, eps);
        }
    });
}

fn add_rows(x: &mut [f32], y: &[f32], team: &Team) {
    const CHUNK: usize = 4096;
    team.chunks(x, CHUNK, &|chunk, a| {
        for (a, b) in a.iter_mut().zip(&y[chunk * CHUNK..]) {
            *a += b;
        }
    });
}

/// `act = silu(gate) ⊙ up` for rows of `[gate | up]`.
fn swiglu_rows(gate_up: &[f32], act: &mut [f32], inter: usize, isa: Isa, team: &Team) {
    team.chunks(act, ROWS_PER_TASK * inter, &|chunk, rows| {
        let src = &gate_up[chunk * ROWS_PER_TASK * 2 * inter..];
        for (a, gu) in rows
            .chunks_exact_mut(inter)
            .zip(src.chunks_exact(2 * inter))
        {
            let (g, u) = gu.split_at(inter);
            silu_mul(g, u, a, isa);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::inverse_rms;

    /// ggml's `rms_norm` scale, as it computes it: squares in f32, summed in f64 one after
    /// another, the mean rounded to f32.
    fn ggml_inverse_rms(x: &[f32], eps: f32) -> f32 {
        let mut sum = 0f64;
        for &v in x {
            sum += f64::from(v * v);
        }
        let mean = (sum / x.len() as f64) as f32;
        1.0 / (mean + eps).sqrt()
    }

    #[test]
    fn the_norm_scale_is_ggml_s_to_the_bit() {
        let mut seed = 1u32;
        let mut next = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 * 8.0 - 4.0
        };
        for len in [1, 7, 8, 13, 64, 576, 1536] {
            for _ in 0..50 {
                let x: Vec<f32> = (0..len).map(|_| next()).collect();
                let (ours, ggml) = (inverse_rms(&x, 1e-5), ggml_inverse_rms(&x, 1e-5));
                assert_eq!(
                    ours.to_bits(),
                    ggml.to_bits(),
                    "{len} values: {ours} / {ggml}"
                );
            }
        }
    }
}
