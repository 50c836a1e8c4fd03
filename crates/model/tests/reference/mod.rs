//! A plain sequential reference decoder for tests: reads the safetensors file with the
//! `safetensors` crate, recomputes the whole sequence for every call with full causal attention
//! in f64, and shares no code with the engine's decoder (no paging, no fused weights, no
//! kernels).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::path::Path;

use wayfinder_model::ModelConfig;
use wayfinder_model::arch::HfConfig;

pub struct Reference {
    pub config: ModelConfig,
    w: HashMap<String, Vec<f64>>,
}

impl Reference {
    pub fn load(dir: &Path) -> Self {
        let hf =
            HfConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).expect("config"))
                .expect("parse");
        let config = ModelConfig::from_hf(&hf).expect("supported");
        let bytes = std::fs::read(dir.join("model.safetensors")).expect("weights");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut w = HashMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                    .collect(),
                safetensors::Dtype::BF16 => view
                    .data()
                    .chunks_exact(2)
                    .map(|b| f64::from(half::bf16::from_le_bytes([b[0], b[1]]).to_f32()))
                    .collect(),
                other => panic!("reference reads f32 and bf16, not {other:?}"),
            };
            w.insert(name, data);
        }
        Self { config, w }
    }

    fn get(&self, name: &str) -> &[f64] {
        self.w
            .get(name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    /// `x [n, in] · W[out, in]ᵀ (+ b)`.
    fn linear(&self, x: &[Vec<f64>], name: &str, bias: bool) -> Vec<Vec<f64>> {
        let w = self.get(&format!("{name}.weight"));
        let inp = x[0].len();
        let out = w.len() / inp;
        let b = bias.then(|| self.get(&format!("{name}.bias")));
        x.iter()
            .map(|row| {
                (0..out)
                    .map(|j| {
                        let s: f64 = (0..inp).map(|k| row[k] * w[j * inp + k]).sum();
                        s + b.map_or(0.0, |b| b[j])
                    })
                    .collect()
            })
            .collect()
    }

    fn rms_norm(&self, x: &[f64], weight: &[f64]) -> Vec<f64> {
        let eps = f64::from(self.config.rms_norm_eps);
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + eps).sqrt();
        x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
    }

    fn rope(&self, x: &mut [f64], pos: usize) {
        let c = &self.config;
        let inv = c.rope_scaling.inv_freq(c.head_dim, c.rope_theta);
        let half = c.head_dim / 2;
        for head in x.chunks_exact_mut(c.head_dim) {
            for i in 0..half {
                let a = pos as f64 * f64::from(inv[i]);
                let (x0, x1) = (head[i], head[i + half]);
                head[i] = x0 * a.cos() - x1 * a.sin();
                head[i + half] = x1 * a.cos() + x0 * a.sin();
            }
        }
    }

    /// Next-token logits after `tokens`.
    pub fn logits(&self, tokens: &[u32]) -> Vec<f32> {
        let c = &self.config;
        let (h, hd) = (c.hidden_size, c.head_dim);
        let embed = self.get("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| embed[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        let n = tokens.len();
        let group = c.num_heads / c.num_kv_heads;
        for l in 0..c.num_layers {
            let p = format!("model.layers.{l}");
            let xn: Vec<Vec<f64>> = x
                .iter()
                .map(|r| self.rms_norm(r, self.get(&format!("{p}.input_layernorm.weight"))))
                .collect();
            let mut q = self.linear(&xn, &format!("{p}.self_attn.q_proj"), c.qkv_bias);
            let mut k = self.linear(&xn, &format!("{p}.self_attn.k_proj"), c.qkv_bias);
            let v = self.linear(&xn, &format!("{p}.self_attn.v_proj"), c.qkv_bias);
            for t in 0..n {
                if c.qk_norm {
                    let qn = self.get(&format!("{p}.self_attn.q_norm.weight"));
                    let kn = self.get(&format!("{p}.self_attn.k_norm.weight"));
                    q[t] = q[t]
                        .chunks(hd)
                        .flat_map(|hh| self.rms_norm(hh, qn))
                        .collect();
                    k[t] = k[t]
                        .chunks(hd)
                        .flat_map(|hh| self.rms_norm(hh, kn))
                        .collect();
                }
                self.rope(&mut q[t], t);
                self.rope(&mut k[t], t);
            }
            // Keys and values as the KV cache keeps them: rounded to f16.
            let half = |rows: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
                rows.into_iter()
                    .map(|r| r.iter().map(|&x| half::f16::from_f64(x).to_f64()).collect())
                    .collect()
            };
            let (k, v) = (half(k), half(v));
            let mut attn = vec![vec![0.0; c.num_heads * hd]; n];
            for t in 0..n {
                let lo = c.sliding_window.map_or(0, |w| (t + 1).saturating_sub(w));
                for head in 0..c.num_heads {
                    let g = head / group;
                    let qh = &q[t][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (lo..=t)
                        .map(|j| {
                            let kj = &k[j][g * hd..(g + 1) * hd];
                            qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for (idx, j) in (lo..=t).enumerate() {
                        for d in 0..hd {
                            attn[t][head * hd + d] += e[idx] / z * v[j][g * hd + d];
                        }
                    }
                }
            }
            let o = self.linear(&attn, &format!("{p}.self_attn.o_proj"), c.o_bias);
            for t in 0..n {
                for d in 0..h {
                    x[t][d] += o[t][d];
                }
            }
            let xn: Vec<Vec<f64>> = x
                .iter()
                .map(|r| {
                    self.rms_norm(r, self.get(&format!("{p}.post_attention_layernorm.weight")))
                })
                .collect();
            let gate = self.linear(&xn, &format!("{p}.mlp.gate_proj"), c.mlp_bias);
            let up = self.linear(&xn, &format!("{p}.mlp.up_proj"), c.mlp_bias);
            let act: Vec<Vec<f64>> = gate
                .iter()
                .zip(&up)
                .map(|(g, u)| {
                    g.iter()
                        .zip(u)
                        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                        .collect()
                })
                .collect();
            let down = self.linear(&act, &format!("{p}.mlp.down_proj"), c.mlp_bias);
            for t in 0..n {
                for d in 0..h {
                    x[t][d] += down[t][d];
                }
            }
        }
        let last = self.rms_norm(&x[n - 1], self.get("model.norm.weight"));
        let head = if c.tie_word_embeddings {
            "model.embed_tokens"
        } else {
            "lm_head"
        };
        self.linear(&[last], head, false)[0]
            .iter()
            .map(|&v| v as f32)
            .collect()
    }
}
