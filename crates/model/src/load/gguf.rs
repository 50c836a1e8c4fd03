//! Loading a GGUF file, llama.cpp's format (versions 2 and 3): hyper-parameters, tokenizer and
//! chat template from its metadata, weights from its tensors, left quantized in the file's
//! memory map.
//!
//! The header is read by candle's `gguf_file` reader; this module maps it onto wayfinder's
//! types:
//!
//! - `general.architecture` `llama`, `qwen2` or `qwen3`, and `{arch}.embedding_length`,
//!   `.block_count`, `.feed_forward_length`, `.attention.head_count(_kv)`, `.attention.key_length`,
//!   `.attention.layer_norm_rms_epsilon`, `.rope.freq_base`, `.rope.scaling.*`,
//!   `.context_length` → an [`HfConfig`] for the architecture's own file in `arch/`.
//! - Llama files hold their query and key projections permuted for llama.cpp's interleaved
//!   rope (its converter's `permute`); they run with [`RopeLayout::Interleaved`] instead of being
//!   permuted back, which keeps the weights in the map. Qwen files are not permuted.
//! - Tensor names: `token_embd`, `blk.N.attn_q`, … ↔ the Hugging Face names the decoder asks for
//!   ([`gguf_name`]); `output.weight` absent means tied embeddings; `rope_freqs` (Llama 3.1's
//!   rope scaling as per-frequency divisors) is applied when present.
//! - Weights: every 2-D tensor of a type in [`QuantType`] stays where it lies; q/k/v and
//!   gate/up are stacked as parts of one [`QuantMatrix`]. With `--dtype` they are dequantized at
//!   load instead. 1-D tensors (norms, biases) are read as f32.
//! - `tokenizer.ggml.*` and `tokenizer.chat_template` → [`GgufTokenizerData`] for
//!   `wayfinder-text`.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::{Content, Value};
use half::{bf16, f16};
use wayfinder_text::FileError;
use wayfinder_text::gguf::GgufTokenizerData;

use super::source::WeightSource;
use super::weights::{Dtype, LoadProgress, ProgressFn};
use crate::arch::{HfConfig, ModelConfig};
use crate::error::ModelError;
use crate::kernels::{Linear, QuantMatrix, QuantPart, QuantType, SharedBytes, WeightData};
use crate::rope::RopeLayout;

/// An open GGUF file: its header, and the file mapped into memory.
pub struct GgufFile {
    path: PathBuf,
    content: Content,
    bytes: SharedBytes,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// Reads the header of `path` and maps the file.
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| FileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.is_file() {
            return Err(FileError::Missing(path.to_path_buf()).into());
        }
        let file = File::open(path).map_err(io)?;
        let content = Content::read(&mut BufReader::new(&file))
            .map_err(|e| header_error(path, &e.to_string()))?;
        // SAFETY: the map is read-only; like every mmap-based loader (llama.cpp's included) we
        // rely on the file not being truncated while the model is served.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            bytes: SharedBytes::new(map),
        })
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Option<&str> {
        match self.meta(key)? {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    fn number(&self, key: &str) -> Option<f64> {
        self.meta(key).and_then(number)
    }

    fn flag(&self, key: &str) -> Option<bool> {
        match self.meta(key)? {
            Value::Bool(b) => Some(*b),
            v => number(v).map(|n| n != 0.0),
        }
    }

    fn array(&self, key: &str) -> &[Value] {
        match self.meta(key) {
            Some(Value::Array(a)) => a,
            _ => &[],
        }
    }

    fn invalid(&self, what: &str) -> ModelError {
        ModelError::InvalidConfig(format!("{}: {what}", self.path.display()))
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.string("general.architecture")
            .ok_or_else(|| self.invalid("no general.architecture"))
    }

    /// The hyper-parameters, as the architecture's file in `arch/` builds them.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let arch = self.architecture()?;
        if !matches!(arch, "llama" | "qwen2" | "qwen3") {
            return Err(ModelError::Unsupported(format!(
                "GGUF architecture {arch:?} in {}; supported: llama, qwen2, qwen3",
                self.path.display()
            )));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let need = |k: &str| {
            self.number(&key(k))
                .map(|v| v as usize)
                .ok_or_else(|| self.invalid(&format!("no {}", key(k))))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let vocab = match self.content.tensor_infos.get("token_embd.weight") {
            Some(info) if info.shape.rank() == 2 => info.shape.dims()[0],
            Some(info) => {
                return Err(self.invalid(&format!(
                    "token_embd.weight has shape {:?}, not [vocab, hidden]",
                    info.shape.dims()
                )));
            }
            None => return Err(self.missing("token_embd.weight")),
        };
        let head_dim = self
            .number(&key("attention.key_length"))
            .map(|v| v as usize);
        let rope_dims = self
            .number(&key("rope.dimension_count"))
            .map(|v| v as usize);
        let full_head = head_dim.unwrap_or(hidden / heads.max(1));
        if rope_dims.is_some_and(|d| d != full_head) {
            return Err(ModelError::Unsupported(format!(
                "partial rotary embeddings ({arch}.rope.dimension_count {rope_dims:?} of a \
                 {full_head}-wide head) in {}",
                self.path.display()
            )));
        }
        let hf = HfConfig {
            architectures: Vec::new(),
            model_type: Some(arch.to_owned()),
            hidden_size: hidden,
            intermediate_size: need("feed_forward_length")?,
            num_hidden_layers: need("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: self
                .number(&key("attention.head_count_kv"))
                .map(|v| v as usize),
            head_dim,
            vocab_size: vocab,
            rms_norm_eps: self
                .number(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.number(&key("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: self.rope_scaling(arch)?,
            max_position_embeddings: need("context_length")?,
            tie_word_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
            attention_bias: self.has("blk.0.attn_output.bias"),
            mlp_bias: self.has("blk.0.ffn_up.bias"),
            sliding_window: None,
            use_sliding_window: None,
            hidden_act: None,
            torch_dtype: None,
        };
        let mut config = ModelConfig::from_hf(&hf)?;
        config.qkv_bias = self.has("blk.0.attn_q.bias");
        if arch == "llama" {
            config.rope_layout = RopeLayout::Interleaved;
        }
        Ok(config)
    }

    /// `{arch}.rope.scaling.*` as the `rope_scaling` object of a `config.json`.
    fn rope_scaling(&self, arch: &str) -> Result<Option<serde_json::Value>, ModelError> {
        let kind = self.string(&format!("{arch}.rope.scaling.type"));
        let factor = self.number(&format!("{arch}.rope.scaling.factor"));
        match (kind, factor) {
            (None | Some("none"), _) => Ok(None),
            (Some("linear"), Some(f)) => {
                Ok(Some(serde_json::json!({"type": "linear", "factor": f})))
            }
            (Some(other), _) => Err(ModelError::Unsupported(format!(
                "rope scaling {other:?} in {}",
                self.path.display()
            ))),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn missing(&self, name: &str) -> ModelError {
        ModelError::MissingTensor {
            name: name.to_owned(),
            file: self.path.clone(),
        }
    }

    /// The tokenizer and chat template of the file, for `wayfinder-text`.
    pub fn tokenizer_data(&self) -> GgufTokenizerData {
        let strings = |key: &str| -> Vec<String> {
            self.array(key)
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    _ => String::new(),
                })
                .collect()
        };
        let id = |key: &str| {
            self.number(&format!("tokenizer.ggml.{key}"))
                .map(|v| v as u32)
        };
        GgufTokenizerData {
            model: self
                .string("tokenizer.ggml.model")
                .unwrap_or_default()
                .to_owned(),
            pre: self.string("tokenizer.ggml.pre").map(str::to_owned),
            tokens: strings("tokenizer.ggml.tokens"),
            token_types: self
                .array("tokenizer.ggml.token_type")
                .iter()
                .map(|v| number(v).unwrap_or(1.0) as i32)
                .collect(),
            merges: strings("tokenizer.ggml.merges"),
            scores: self
                .array("tokenizer.ggml.scores")
                .iter()
                .map(|v| number(v).unwrap_or(0.0) as f32)
                .collect(),
            bos_token_id: id("bos_token_id"),
            eos_token_id: id("eos_token_id"),
            eot_token_id: id("eot_token_id"),
            eom_token_id: id("eom_token_id"),
            unknown_token_id: id("unknown_token_id"),
            padding_token_id: id("padding_token_id"),
            add_bos_token: self.flag("tokenizer.ggml.add_bos_token"),
            add_eos_token: self.flag("tokenizer.ggml.add_eos_token"),
            add_space_prefix: self.flag("tokenizer.ggml.add_space_prefix"),
            chat_template: self.string("tokenizer.chat_template").map(str::to_owned),
        }
    }

    /// The tensors, served as the decoder asks for them: quantized as stored when `dtype` is
    /// `None`, else dequantized into `dtype`.
    pub fn weights<'a>(
        &'a self,
        dtype: Option<Dtype>,
        progress: ProgressFn<'a>,
    ) -> GgufWeights<'a> {
        progress(LoadProgress {
            loaded: 0,
            total: self.content.tensor_infos.len(),
        });
        GgufWeights {
            file: self,
            dtype,
            loaded: Cell::new(0),
            progress,
        }
    }

    /// The type most of the file's 2-D tensors have (llama.cpp's "file type"), e.g. `Q4_1`.
    pub fn weight_type(&self) -> Option<QuantType> {
        let mut counts: HashMap<QuantType, usize> = HashMap::new();
        for info in self.content.tensor_infos.values() {
            if info.shape.rank() == 2
                && let Some(t) = QuantType::from_ggml(info.ggml_dtype)
            {
                *counts.entry(t).or_default() += 1;
            }
        }
        counts
            .into_iter()
            .max_by_key(|&(t, n)| (n, t.name()))
            .map(|(t, _)| t)
    }
}

fn number(v: &Value) -> Option<f64> {
    Some(match v {
        Value::U8(x) => f64::from(*x),
        Value::I8(x) => f64::from(*x),
        Value::U16(x) => f64::from(*x),
        Value::I16(x) => f64::from(*x),
        Value::U32(x) => f64::from(*x),
        Value::I32(x) => f64::from(*x),
        Value::U64(x) => *x as f64,
        Value::I64(x) => *x as f64,
        Value::F32(x) => f64::from(*x),
        Value::F64(x) => *x,
        _ => return None,
    })
}

/// ggml type ids candle's reader does not know, by name, for the error that names them.
const UNREADABLE_TYPES: &[(u32, &str)] = &[
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// The error for a header candle could not read; an unknown tensor type is named.
fn header_error(path: &Path, message: &str) -> ModelError {
    if let Some(id) = message
        .strip_prefix("unknown dtype for tensor ")
        .and_then(|n| n.trim().parse::<u32>().ok())
    {
        let name = UNREADABLE_TYPES
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(|| format!("ggml type {id}"), |(_, n)| (*n).to_owned());
        return ModelError::Unsupported(format!(
            "{}: a tensor has type {name}; supported types: {}",
            path.display(),
            SUPPORTED
        ));
    }
    ModelError::Gguf {
        path: path.to_path_buf(),
        message: message.to_owned(),
    }
}

const SUPPORTED: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// The GGUF name of a Hugging Face tensor name (`model.layers.3.mlp.up_proj.weight` →
/// `blk.3.ffn_up.weight`), as llama.cpp's converter names them.
pub fn gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = hf.rsplit_once('.')?;
    let mapped = match stem {
        "model.embed_tokens" => "token_embd".to_owned(),
        "model.norm" => "output_norm".to_owned(),
        "lm_head" => "output".to_owned(),
        // Not a Hugging Face tensor: the frequency factors of Llama 3.1's rope scaling, which
        // llama.cpp's converter computes from `rope_scaling`.
        "rope_freqs" => "rope_freqs".to_owned(),
        _ => {
            let (layer, part) = stem.strip_prefix("model.layers.")?.split_once('.')?;
            let part = match part {
                "input_layernorm" => "attn_norm",
                "post_attention_layernorm" => "ffn_norm",
                "self_attn.q_proj" => "attn_q",
                "self_attn.k_proj" => "attn_k",
                "self_attn.v_proj" => "attn_v",
                "self_attn.o_proj" => "attn_output",
                "self_attn.q_norm" => "attn_q_norm",
                "self_attn.k_norm" => "attn_k_norm",
                "mlp.gate_proj" => "ffn_gate",
                "mlp.up_proj" => "ffn_up",
                "mlp.down_proj" => "ffn_down",
                _ => return None,
            };
            format!("blk.{layer}.{part}")
        }
    };
    Some(format!("{mapped}.{suffix}"))
}

/// The tensors of a [`GgufFile`] as a [`WeightSource`].
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    dtype: Option<Dtype>,
    loaded: Cell<usize>,
    progress: ProgressFn<'a>,
}

impl std::fmt::Debug for GgufWeights<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWeights")
            .field("file", &self.file.path)
            .field("dtype", &self.dtype)
            .finish()
    }
}

/// One tensor's place in the file.
struct Located {
    name: String,
    ty: QuantType,
    dims: Vec<usize>,
    offset: usize,
    len: usize,
}

impl GgufWeights<'_> {
    /// Finds the tensor the decoder calls `hf`, checking its shape and type.
    fn locate(&self, hf: &str, shape: &[usize]) -> Result<Located, ModelError> {
        let file = self.file;
        let name = gguf_name(hf).ok_or_else(|| file.missing(hf))?;
        let info = file
            .content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| file.missing(&name))?;
        let dims = info.shape.dims().to_vec();
        if dims != shape {
            return Err(ModelError::ShapeMismatch {
                name,
                file: file.path.clone(),
                expected: shape.to_vec(),
                got: dims,
            });
        }
        let ty = QuantType::from_ggml(info.ggml_dtype).ok_or_else(|| {
            ModelError::Unsupported(format!(
                "tensor {name:?} in {} has type {:?}; supported types: {SUPPORTED}",
                file.path.display(),
                info.ggml_dtype
            ))
        })?;
        let elems: usize = dims.iter().product();
        let len = elems / ty.block_values() * ty.block_bytes();
        let offset = usize::try_from(file.content.tensor_data_offset + info.offset)
            .map_err(|_| file.invalid(&format!("tensor {name:?} lies past the address space")))?;
        self.loaded.set(self.loaded.get() + 1);
        (self.progress)(LoadProgress {
            loaded: self.loaded.get(),
            total: file.content.tensor_infos.len(),
        });
        Ok(Located {
            name,
            ty,
            dims,
            offset,
            len,
        })
    }

    /// The tensor's bytes, checked against the file's length.
    fn bytes(&self, t: &Located) -> Result<&[u8], ModelError> {
        let all = self.file.bytes_slice();
        all.get(t.offset..t.offset + t.len).ok_or_else(|| {
            self.file.invalid(&format!(
                "tensor {:?} ({} bytes at {}) runs past the end of the file",
                t.name, t.len, t.offset
            ))
        })
    }

    /// The tensor dequantized to f32.
    fn dequantized(&self, t: &Located) -> Result<Vec<f32>, ModelError> {
        let q = qtensor_from_ggml(t.ty.ggml(), self.bytes(t)?, t.dims.clone(), &Device::Cpu)?;
        Ok(q.dequantize(&Device::Cpu)?
            .flatten_all()?
            .to_vec1::<f32>()?)
    }
}

impl GgufFile {
    fn bytes_slice(&self) -> &[u8] {
        self.bytes.as_slice()
    }
}

impl WeightSource for GgufWeights<'_> {
    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|n| self.file.has(&n))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.locate(name, &[len])?;
        self.dequantized(&t)
    }

    fn stacked_linear(
        &self,
        parts: &[(&str, usize)],
        cols: usize,
        bias: bool,
    ) -> Result<Linear, ModelError> {
        let rows: usize = parts.iter().map(|(_, r)| r).sum();
        let mut located = Vec::with_capacity(parts.len());
        let mut biases = Vec::with_capacity(rows);
        for (prefix, r) in parts {
            located.push(self.locate(&format!("{prefix}.weight"), &[*r, cols])?);
            if bias {
                biases.extend(self.vector(&format!("{prefix}.bias"), *r)?);
            }
        }
        let all_float = located.iter().all(|t| t.ty.is_float());
        let data = match self.dtype {
            None if !all_float => {
                let mut qparts = Vec::with_capacity(located.len());
                for t in &located {
                    self.bytes(t)?;
                    qparts.push(QuantPart {
                        ty: t.ty,
                        bytes: self.file.bytes.clone(),
                        offset: t.offset,
                        rows: t.dims[0],
                    });
                }
                WeightData::Quant(QuantMatrix::new(cols, qparts).map_err(|e| {
                    self.file
                        .invalid(&format!("tensor {:?}: {e}", located[0].name))
                })?)
            }
            dtype => {
                let target = dtype.unwrap_or(match located[0].ty {
                    QuantType::Bf16 => Dtype::Bf16,
                    QuantType::F16 => Dtype::F16,
                    _ => Dtype::F32,
                });
                let mut values = Vec::with_capacity(rows * cols);
                for t in &located {
                    values.extend(self.dequantized(t)?);
                }
                match target {
                    Dtype::F32 => WeightData::F32(values),
                    Dtype::Bf16 => {
                        WeightData::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect())
                    }
                    Dtype::F16 => {
                        WeightData::F16(values.iter().map(|&v| f16::from_f32(v)).collect())
                    }
                }
            }
        };
        Ok(Linear::new(data, rows, cols, bias.then_some(biases)))
    }
}
