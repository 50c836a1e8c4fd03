//! Random-weight models written as Hugging Face folders: the built-in `demo` model, the
//! published shapes of `wayfinder make-model`, and the small models tests generate.
//!
//! A folder holds `config.json`, `model.safetensors` (or shards with an index),
//! `tokenizer.json` (byte-level BPE trained on a small built-in corpus), `tokenizer_config.json`
//! (with a ChatML template) and `generation_config.json` — the same files a downloaded model has,
//! so it loads through the same [`crate::load`]. Weights are uniform with variance
//! `1 / fan_in`, from a seeded RNG: the same spec and seed always give the same files.
//! [`gguf`] writes such a folder (or any Llama/Qwen folder with a byte-level BPE tokenizer) as
//! a GGUF file, quantized.

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use serde_json::json;
use wayfinder_text::synth::{CHATML_TEMPLATE, train_tokenizer};
use wayfinder_text::{FileError, TextError};

use crate::arch::Architecture;
use crate::error::ModelError;
use crate::load::weights::Dtype;

pub mod demo;
pub mod gguf;

/// The shape of a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthSpec {
    /// Architecture written into `config.json`.
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
    /// Per-head width when not `hidden / heads`.
    pub head_dim: Option<usize>,
    /// Model vocabulary (the tokenizer's may be smaller, as with padded vocabularies).
    pub vocab_size: usize,
    /// Trained context length.
    pub max_position_embeddings: usize,
    /// Output head tied to the embedding.
    pub tie_word_embeddings: bool,
    /// Rotary base.
    pub rope_theta: f64,
    /// `rope_scaling` as written into `config.json`.
    pub rope_scaling: Option<serde_json::Value>,
    /// Sliding window (Mistral).
    pub sliding_window: Option<usize>,
}

impl SynthSpec {
    /// A tiny Llama for tests.
    pub fn tiny(architecture: Architecture) -> Self {
        Self {
            architecture,
            hidden_size: 64,
            intermediate_size: 128,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: None,
            vocab_size: 300,
            max_position_embeddings: 512,
            tie_word_embeddings: false,
            rope_theta: 10_000.0,
            rope_scaling: None,
            sliding_window: None,
        }
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_heads)
    }

    /// Every tensor: name, shape, and whether it is a norm weight (initialised near 1).
    fn tensors(&self) -> Vec<(String, Vec<usize>, Init)> {
        let (h, i, hd) = (self.hidden_size, self.intermediate_size, self.head_dim());
        let (q, kv) = (self.num_heads * hd, self.num_kv_heads * hd);
        let arch = self.architecture;
        let mut t = vec![(
            "model.embed_tokens.weight".into(),
            vec![self.vocab_size, h],
            Init::Unit,
        )];
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            let w = |n: &str, shape: Vec<usize>| {
                (format!("{p}.{n}"), shape.clone(), Init::fan_in(&shape))
            };
            t.push((format!("{p}.input_layernorm.weight"), vec![h], Init::Norm));
            t.push(w("self_attn.q_proj.weight", vec![q, h]));
            t.push(w("self_attn.k_proj.weight", vec![kv, h]));
            t.push(w("self_attn.v_proj.weight", vec![kv, h]));
            if arch == Architecture::Qwen2 {
                for (n, len) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                    t.push((format!("{p}.self_attn.{n}.bias"), vec![len], Init::Bias));
                }
            }
            if arch == Architecture::Qwen3 {
                t.push((format!("{p}.self_attn.q_norm.weight"), vec![hd], Init::Norm));
                t.push((format!("{p}.self_attn.k_norm.weight"), vec![hd], Init::Norm));
            }
            t.push(w("self_attn.o_proj.weight", vec![h, q]));
            t.push((
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                Init::Norm,
            ));
            t.push(w("mlp.gate_proj.weight", vec![i, h]));
            t.push(w("mlp.up_proj.weight", vec![i, h]));
            t.push(w("mlp.down_proj.weight", vec![h, i]));
        }
        t.push(("model.norm.weight".into(), vec![h], Init::Norm));
        if !self.tie_word_embeddings {
            t.push((
                "lm_head.weight".into(),
                vec![self.vocab_size, h],
                Init::fan_in(&[self.vocab_size, h]),
            ));
        }
        t
    }

    fn config_json(&self, dtype: Dtype, eos: u32, bos: u32) -> serde_json::Value {
        let arch = self.architecture;
        let mut c = json!({
            "architectures": [arch.class_name()],
            "model_type": arch.model_type(),
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "bos_token_id": bos,
            "eos_token_id": eos,
            "torch_dtype": dtype.torch_name(),
        });
        if let Some(hd) = self.head_dim {
            c["head_dim"] = json!(hd);
        }
        if let Some(w) = self.sliding_window {
            c["sliding_window"] = json!(w);
            c["use_sliding_window"] = json!(true);
        }
        c
    }
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy)]
enum Init {
    /// Uniform with variance 1 / fan_in.
    FanIn(usize),
    /// Uniform with variance 1 (embeddings).
    Unit,
    /// 1 ± 0.1 (norm weights).
    Norm,
    /// ±0.1 (biases).
    Bias,
}

impl Init {
    fn fan_in(shape: &[usize]) -> Self {
        Self::FanIn(shape[1])
    }

    fn sample(self, rng: &mut StdRng) -> f32 {
        let u: f32 = rng.random_range(-1.0..1.0);
        match self {
            Self::FanIn(n) => u * (3.0 / n as f32).sqrt(),
            Self::Unit => u * 3f32.sqrt(),
            Self::Norm => 1.0 + 0.1 * u,
            Self::Bias => 0.1 * u,
        }
    }
}

/// Writes a complete model folder into `dir` (created if needed). With `shard_bytes`, weights
/// are split into shards of about that size with a `model.safetensors.index.json`.
pub fn write_model(
    dir: &Path,
    spec: &SynthSpec,
    seed: u64,
    dtype: Dtype,
    shard_bytes: Option<usize>,
) -> Result<(), ModelError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::from(FileError::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tokenizer = train_tokenizer(spec.vocab_size)?;
    let tok_path = dir.join("tokenizer.json");
    tokenizer.save(&tok_path, false).map_err(|e| {
        ModelError::Text(TextError::Tokenizer(format!("{}: {e}", tok_path.display())))
    })?;
    let id = |t: &str| tokenizer.token_to_id(t).expect("special tokens were added");
    let (eos, bos) = (id("<|im_end|>"), id("<|endoftext|>"));

    let write_json = |name: &str, value: &serde_json::Value| {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON values serialise");
        std::fs::write(&path, text).map_err(io(&path))
    };
    write_json(
        "tokenizer_config.json",
        &json!({
            "bos_token": "<|endoftext|>",
            "eos_token": "<|im_end|>",
            "add_bos_token": false,
            "chat_template": CHATML_TEMPLATE,
            "model_max_length": spec.max_position_embeddings,
        }),
    )?;
    write_json(
        "generation_config.json",
        &json!({ "bos_token_id": bos, "eos_token_id": [eos, id("<|endoftext|>")] }),
    )?;
    write_weights(dir, spec, seed, dtype, shard_bytes)?;
    // Last, so that a folder with a config.json is complete.
    write_json("config.json", &spec.config_json(dtype, eos, bos))
}

fn write_weights(
    dir: &Path,
    spec: &SynthSpec,
    seed: u64,
    dtype: Dtype,
    shard_bytes: Option<usize>,
) -> Result<(), ModelError> {
    let mut rng = StdRng::seed_from_u64(seed);
    /// A tensor ready to write: name, shape, little-endian bytes.
    type Encoded = (String, Vec<usize>, Vec<u8>);
    let mut shards: Vec<Vec<Encoded>> = vec![Vec::new()];
    let mut current = 0;
    for (name, shape, init) in spec.tensors() {
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(n * 4);
        for _ in 0..n {
            let v = init.sample(&mut rng);
            dtype.encode_le(v, &mut bytes);
        }
        if shard_bytes.is_some_and(|limit| current > 0 && current + bytes.len() > limit) {
            shards.push(Vec::new());
            current = 0;
        }
        current += bytes.len();
        shards
            .last_mut()
            .expect("one shard at least")
            .push((name, shape, bytes));
    }
    let st_dtype = dtype.safetensors();
    let count = shards.len();
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if shard_bytes.is_none() {
            "model.safetensors".to_owned()
        } else {
            format!("model-{:05}-of-{count:05}.safetensors", i + 1)
        };
        let views = shard
            .iter()
            .map(|(name, shape, bytes)| {
                weight_map.insert(name.clone(), json!(file));
                TensorView::new(st_dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Safetensors {
                path: dir.join(&file),
                message: e.to_string(),
            })?;
        let path = dir.join(&file);
        safetensors::serialize_to_file(views, None, &path).map_err(|e| {
            ModelError::Safetensors {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
    }
    if shard_bytes.is_some() {
        let path = dir.join("model.safetensors.index.json");
        let index = json!({ "metadata": {}, "weight_map": weight_map });
        std::fs::write(&path, index.to_string())
            .map_err(|source| FileError::Io { path, source })?;
    }
    Ok(())
}

/// Names accepted by [`published_shape`].
pub const PUBLISHED_SHAPES: [&str; 3] = ["smollm2-135m", "qwen2.5-0.5b", "demo"];

/// Real published model shapes (random weights) for benchmarks, and the demo model's.
pub fn published_shape(name: &str) -> Option<SynthSpec> {
    match name {
        // HuggingFaceTB/SmolLM2-135M: a Llama with tied embeddings.
        "smollm2-135m" => Some(SynthSpec {
            architecture: Architecture::Llama,
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: None,
            vocab_size: 49_152,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            rope_theta: 100_000.0,
            rope_scaling: None,
            sliding_window: None,
        }),
        // Qwen/Qwen2.5-0.5B: Qwen2 with q/k/v bias and tied embeddings.
        "qwen2.5-0.5b" => Some(SynthSpec {
            architecture: Architecture::Qwen2,
            hidden_size: 896,
            intermediate_size: 4864,
            num_layers: 24,
            num_heads: 14,
            num_kv_heads: 2,
            head_dim: None,
            vocab_size: 151_936,
            max_position_embeddings: 32_768,
            tie_word_embeddings: true,
            rope_theta: 1_000_000.0,
            rope_scaling: None,
            sliding_window: None,
        }),
        "demo" => Some(SynthSpec {
            architecture: Architecture::Llama,
            hidden_size: 256,
            intermediate_size: 768,
            num_layers: 4,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: None,
            vocab_size: 2048,
            max_position_embeddings: 4096,
            tie_word_embeddings: true,
            rope_theta: 10_000.0,
            rope_scaling: None,
            sliding_window: None,
        }),
        _ => None,
    }
}
