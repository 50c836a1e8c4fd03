//! Writing a Hugging Face folder (Llama, Mistral, Qwen2, Qwen3 with a byte-level BPE
//! `tokenizer.json`) as a GGUF file, the way llama.cpp's `convert_hf_to_gguf.py` does: its
//! metadata keys and tensor names, the query and key rows of Llama-family models permuted for
//! llama.cpp's interleaved rope, norms in F32, matrices in the type asked for.
//!
//! Candle's `gguf_file::write` does the writing (GGUF version 2). This exists so that tests and
//! benchmarks can make GGUF files of wayfinder's random-weight models; real GGUF files come from
//! llama.cpp's own tools.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::{self, Value};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use wayfinder_text::FileError;
use wayfinder_text::files::read_json;

use crate::arch::{Architecture, HfConfig, ModelConfig};
use crate::error::ModelError;
use crate::kernels::QuantType;
use crate::load::gguf::gguf_name;
use crate::load::safetensors_files;
use crate::rope::RopeScaling;

/// The parts of `tokenizer.json` a GGUF file carries.
#[derive(Deserialize)]
struct TokenizerJson {
    model: TokenizerModel,
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

#[derive(Deserialize)]
struct TokenizerModel {
    vocab: BTreeMap<String, u32>,
    #[serde(default)]
    merges: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct AddedToken {
    id: u32,
    content: String,
    #[serde(default)]
    special: bool,
}

/// Writes the model folder `dir` as the GGUF file `out`, with 2-D weights in `matrices` (those
/// whose rows are not a whole number of its blocks fall back to F32, as `llama-quantize` falls
/// back to another type) and the token embedding in `embedding` (default: `matrices`).
pub fn write_gguf(
    dir: &Path,
    out: &Path,
    matrices: QuantType,
    embedding: Option<QuantType>,
) -> Result<(), ModelError> {
    let hf: HfConfig = read_json(&dir.join("config.json"))?;
    let config = ModelConfig::from_hf(&hf)?;
    let arch = match config.architecture {
        Architecture::Llama | Architecture::Mistral => "llama",
        Architecture::Qwen2 => "qwen2",
        Architecture::Qwen3 => "qwen3",
    };
    // Llama 3.1's scaling goes into the file as `rope_freqs`, each frequency's divisor, as
    // llama.cpp's converter writes it; other scalings are not written.
    let rope_freqs = match config.rope_scaling {
        RopeScaling::None => None,
        RopeScaling::Llama3 { .. } => {
            let base = RopeScaling::None.inv_freq(config.head_dim, config.rope_theta);
            let scaled = config
                .rope_scaling
                .inv_freq(config.head_dim, config.rope_theta);
            let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
            Some(Tensor::from_vec(
                factors,
                config.head_dim / 2,
                &Device::Cpu,
            )?)
        }
        other => {
            return Err(ModelError::Unsupported(format!(
                "writing rope scaling {other:?} into GGUF"
            )));
        }
    };
    let mut meta = model_metadata(arch, &config);
    meta.extend(tokenizer_metadata(dir)?);

    let files = safetensors_files(dir)?;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for path in &files {
        // SAFETY: read-only map of a file this process wrote or was given; not truncated while
        // it is read.
        let st = unsafe { MmapedSafetensors::new(path) }?;
        for (name, _) in st.tensors() {
            let gname = gguf_name(&name).ok_or_else(|| {
                ModelError::Unsupported(format!("tensor {name:?} has no GGUF name"))
            })?;
            let mut t = st.load(&name, &Device::Cpu)?.to_dtype(DType::F32)?;
            if arch == "llama" && name.ends_with("q_proj.weight") {
                t = permute_rows(&t, config.num_heads)?;
            } else if arch == "llama" && name.ends_with("k_proj.weight") {
                t = permute_rows(&t, config.num_kv_heads)?;
            }
            let ty = if t.rank() < 2 {
                QuantType::F32
            } else if gname == "token_embd.weight" {
                embedding.unwrap_or(matrices)
            } else {
                matrices
            };
            let ty = if t.dim(t.rank() - 1)?.is_multiple_of(ty.block_values()) {
                ty
            } else {
                QuantType::F32
            };
            tensors.push((gname, QTensor::quantize(&t, ty.ggml())?));
        }
    }
    if let Some(t) = rope_freqs {
        tensors.push((
            "rope_freqs.weight".to_owned(),
            QTensor::quantize(&t, QuantType::F32.ggml())?,
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let io = |source| FileError::Io {
        path: out.to_path_buf(),
        source,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).map_err(io)?);
    gguf_file::write(&mut file, &meta_refs, &tensor_refs)?;
    std::io::Write::flush(&mut file).map_err(io)?;
    Ok(())
}

/// llama.cpp's converter's `permute`: within each head, row `2i + j` takes row `j · half + i`.
fn permute_rows(t: &Tensor, heads: usize) -> Result<Tensor, ModelError> {
    let (rows, cols) = t.dims2()?;
    let half = rows / heads / 2;
    Ok(t.reshape((heads, 2, half, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

fn model_metadata(arch: &str, c: &ModelConfig) -> Vec<(String, Value)> {
    let u = |v: usize| Value::U32(v as u32);
    let k = |s: &str| format!("{arch}.{s}");
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            "general.name".into(),
            Value::String("wayfinder synthetic".into()),
        ),
        (k("context_length"), u(c.max_position_embeddings)),
        (k("embedding_length"), u(c.hidden_size)),
        (k("block_count"), u(c.num_layers)),
        (k("feed_forward_length"), u(c.intermediate_size)),
        (k("attention.head_count"), u(c.num_heads)),
        (k("attention.head_count_kv"), u(c.num_kv_heads)),
        (k("attention.key_length"), u(c.head_dim)),
        (k("attention.value_length"), u(c.head_dim)),
        (
            k("attention.layer_norm_rms_epsilon"),
            Value::F32(c.rms_norm_eps),
        ),
        (k("rope.freq_base"), Value::F32(c.rope_theta)),
        (k("rope.dimension_count"), u(c.head_dim)),
    ]
}

/// `tokenizer.ggml.*` and the chat template of a folder whose tokenizer is a byte-level BPE.
fn tokenizer_metadata(dir: &Path) -> Result<Vec<(String, Value)>, ModelError> {
    let tok: TokenizerJson = read_json(&dir.join("tokenizer.json"))?;
    let config: serde_json::Value = read_json(&dir.join("tokenizer_config.json"))?;
    let size = tok
        .model
        .vocab
        .values()
        .chain(tok.added_tokens.iter().map(|a| &a.id))
        .max()
        .map_or(0, |m| *m as usize + 1);
    let mut tokens: Vec<String> = (0..size).map(|i| format!("[PAD{i}]")).collect();
    let mut types = vec![5i32; size];
    for (text, &id) in &tok.model.vocab {
        tokens[id as usize] = text.clone();
        types[id as usize] = 1;
    }
    for a in &tok.added_tokens {
        tokens[a.id as usize] = a.content.clone();
        types[a.id as usize] = if a.special { 3 } else { 4 };
    }
    let merges: Vec<Value> = tok
        .model
        .merges
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => Value::String(
                pair.iter()
                    .filter_map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            other => Value::String(other.as_str().unwrap_or_default().to_owned()),
        })
        .collect();
    let id_of = |key: &str| {
        let text = config
            .get(key)
            .and_then(|v| v.as_str().or_else(|| v.get("content")?.as_str()))?;
        tokens
            .iter()
            .position(|t| t == text)
            .map(|i| Value::U32(i as u32))
    };
    let mut meta = vec![
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().cloned().map(Value::String).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(
                config
                    .get("add_bos_token")
                    .and_then(|v| v.as_bool())
                    .unwrap_or(false),
            ),
        ),
    ];
    for (key, field) in [("bos_token_id", "bos_token"), ("eos_token_id", "eos_token")] {
        if let Some(v) = id_of(field) {
            meta.push((format!("tokenizer.ggml.{key}"), v));
        }
    }
    if let Some(t) = config.get("chat_template").and_then(|v| v.as_str()) {
        meta.push((
            "tokenizer.chat_template".into(),
            Value::String(t.to_owned()),
        ));
    }
    Ok(meta)
}
