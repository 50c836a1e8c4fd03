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
//! logits = rms_norm(x[last token of each request that samples]) · W_headᵀ
//! ```
//!
//! Linear layers run over all `T` tokens at once; only attention is per request. Positions,
//! slots and block tables come from the engine's [`Batch`], so prefill chunks, decode tokens and
//! recomputation mix freely in one step.

use rayon::prelude::*;
use wayfinder_core::Batch;

use crate::attention::{AttentionParams, StepContext, paged_attention};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::kv_store::PagedKvStore;
use crate::linear::Linear;
use crate::rope::RotaryTable;
use crate::simd::Isa;
use crate::weights::{Dtype, WeightLoader};

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
}

impl Decoder {
    /// Loads every weight named by the Hugging Face convention, checking shapes against
    /// `config`. Rotary tables cover `max_positions`.
    pub fn load(
        config: ModelConfig,
        weights: &WeightLoader,
        dtype: Dtype,
        max_positions: usize,
    ) -> Result<Self, ModelError> {
        let c = &config;
        let (h, q, kv, inter) = (c.hidden_size, c.q_size(), c.kv_size(), c.intermediate_size);
        let embed = weights.linear("model.embed_tokens", c.vocab_size, h, dtype, false)?;
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
                qkv: weights.stacked_linear(
                    &[(&qn, q), (&kn, kv), (&vn, kv)],
                    h,
                    dtype,
                    c.qkv_bias,
                )?,
                q_norm: qk_norm("q_norm")?,
                k_norm: qk_norm("k_norm")?,
                o: weights.linear(&attn("o_proj"), h, q, dtype, c.o_bias)?,
                post_norm: norm(&format!("{p}.post_attention_layernorm"), h)?,
                gate_up: weights.stacked_linear(
                    &[(&mlp("gate_proj"), inter), (&mlp("up_proj"), inter)],
                    h,
                    dtype,
                    c.mlp_bias,
                )?,
                down: weights.linear(&mlp("down_proj"), h, inter, dtype, c.mlp_bias)?,
            });
        }
        let norm = weights.vector("model.norm.weight", h)?;
        let lm_head = if c.tie_word_embeddings {
            None
        } else {
            Some(weights.linear("lm_head", c.vocab_size, h, dtype, false)?)
        };
        let rotary = RotaryTable::new(c.rope_scaling, c.head_dim, c.rope_theta, max_positions);
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
        let l = |x: &Linear| x.weight().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|y| l(&y.qkv) + l(&y.o) + l(&y.gate_up) + l(&y.down))
            .sum();
        layers + l(&self.embed) + self.lm_head.as_ref().map_or(0, l)
    }

    /// Runs one step: writes its tokens' keys and values into `kv` and returns the logits rows
    /// (`[requests that sample, vocab]`) in batch order.
    pub fn forward(&self, batch: &Batch, kv: &mut PagedKvStore) -> Vec<f32> {
        let c = &self.config;
        let (t, h) = (batch.num_tokens(), c.hidden_size);
        let (q_size, kv_size, inter) = (c.q_size(), c.kv_size(), c.intermediate_size);
        let step = StepContext::new(batch, *kv.geometry(), self.isa);

        let mut x = vec![0f32; t * h];
        for (row, &token) in x.chunks_exact_mut(h).zip(&batch.token_ids) {
            self.embed.weight().row_f32(token as usize, h, row);
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
            rms_norm_rows(&x, &mut xn, &layer.input_norm, c.rms_norm_eps);
            layer.qkv.forward(&xn, t, &mut qkv);
            self.split_qkv(&qkv, &mut q, &mut k, &mut v, layer, &batch.positions);
            kv.write(i, &batch.slot_mapping, &k, &v);
            paged_attention(&q, &mut attn, &step, kv.layer(i), &self.attention);
            layer.o.forward(&attn, t, &mut proj);
            add_rows(&mut x, &proj);

            rms_norm_rows(&x, &mut xn, &layer.post_norm, c.rms_norm_eps);
            layer.gate_up.forward(&xn, t, &mut gate_up);
            swiglu_rows(&gate_up, &mut act, inter);
            layer.down.forward(&act, t, &mut proj);
            add_rows(&mut x, &proj);
        }

        let last: Vec<usize> = batch
            .seqs
            .iter()
            .filter(|s| s.needs_logits)
            .map(|s| s.tokens.end - 1)
            .collect();
        let mut hidden = vec![0f32; last.len() * h];
        for (dst, &row) in hidden.chunks_exact_mut(h).zip(&last) {
            rms_norm(&x[row * h..(row + 1) * h], dst, &self.norm, c.rms_norm_eps);
        }
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        let mut logits = vec![0f32; last.len() * c.vocab_size];
        head.forward(&hidden, last.len(), &mut logits);
        logits
    }

    /// Splits the fused projection into q, k, v; applies the q/k norms and rotary embedding.
    fn split_qkv(
        &self,
        qkv: &[f32],
        q: &mut [f32],
        k: &mut [f32],
        v: &mut [f32],
        layer: &Layer,
        positions: &[u32],
    ) {
        let c = &self.config;
        let (qs, ks) = (c.q_size(), c.kv_size());
        let eps = c.rms_norm_eps;
        let hd = c.head_dim;
        q.par_chunks_mut(qs)
            .zip(k.par_chunks_mut(ks))
            .zip(v.par_chunks_mut(ks))
            .zip(qkv.par_chunks(qs + 2 * ks))
            .zip(positions.par_iter())
            .with_min_len(ROWS_PER_TASK)
            .for_each(|((((qt, kt), vt), src), &pos)| {
                qt.copy_from_slice(&src[..qs]);
                kt.copy_from_slice(&src[qs..qs + ks]);
                vt.copy_from_slice(&src[qs + ks..]);
                if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                    for head in qt.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, qn, eps);
                    }
                    for head in kt.chunks_exact_mut(hd) {
                        rms_norm_in_place(head, kn, eps);
                    }
                }
                self.rotary.apply(qt, pos as usize);
                self.rotary.apply(kt, pos as usize);
            });
    }
}

/// `out = x / rms(x) · weight`.
fn rms_norm(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for ((o, xi), w) in out.iter_mut().zip(x).zip(weight) {
        *o = xi * inv * w;
    }
}

fn rms_norm_in_place(x: &mut [f32], weight: &[f32], eps: f32) {
    let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ms + eps).sqrt();
    for (xi, w) in x.iter_mut().zip(weight) {
        *xi *= inv * w;
    }
}

fn rms_norm_rows(x: &[f32], out: &mut [f32], weight: &[f32], eps: f32) {
    let h = weight.len();
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(o, xi)| rms_norm(xi, o, weight, eps));
}

fn add_rows(x: &mut [f32], y: &[f32]) {
    x.par_chunks_mut(4096)
        .zip(y.par_chunks(4096))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += b));
}

/// `act = silu(gate) ⊙ up` for rows of `[gate | up]`.
fn swiglu_rows(gate_up: &[f32], act: &mut [f32], inter: usize) {
    act.par_chunks_mut(inter)
        .zip(gate_up.par_chunks(2 * inter))
        .with_min_len(ROWS_PER_TASK)
        .for_each(|(a, gu)| {
            let (g, u) = gu.split_at(inter);
            for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                *a = g / (1.0 + crate::simd::exp(-g)) * u;
            }
        });
}
