//! Loading a model: a Hugging Face folder, or a GGUF file ([`gguf`]). The weights are read here
//! (through a [`source::WeightSource`]), the text side through [`wayfinder_text::ModelText`].
//!
//! A folder:
//!
//! | file | needed | what is read |
//! |---|---|---|
//! | `config.json` | yes | architecture and shapes ([`crate::arch`]) |
//! | `model.safetensors`, or the shards of `model.safetensors.index.json` | yes | weights, memory-mapped ([`weights`]) |
//! | `tokenizer.json`, `tokenizer_config.json`, `generation_config.json` | see [`wayfinder_text::ModelText`] | tokenizer, template, eos ids, sampling defaults |
//!
//! Every error names the file it is about. Progress is reported through a callback
//! ([`load_with_progress`]); the library draws nothing on a terminal.

pub mod gguf;
pub mod source;
pub mod weights;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wayfinder_text::files::read_json;
use wayfinder_text::{FileError, ModelText};

use crate::arch::{HfConfig, ModelConfig};
use crate::decoder::Decoder;
use crate::error::ModelError;
use gguf::GgufFile;
use weights::{Dtype, LoadProgress, WeightLoader};

/// How to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Weight dtype; `None` keeps the checkpoint's (`--dtype auto`).
    pub dtype: Option<Dtype>,
    /// Longest request; defaults to the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
}

/// A loaded model: weights and the text side.
#[derive(Debug)]
pub struct Model {
    /// Runtime config.
    pub config: ModelConfig,
    /// The weights.
    pub decoder: Decoder,
    /// Tokenizer, chat template, sampling defaults, eos ids, and the folder's name.
    pub text: ModelText,
    /// The dtype float weights are held in.
    pub dtype: Dtype,
    /// What the weights are held as, for people: `bf16`, or a GGUF file's type such as `Q4_1`.
    pub weight_type: &'static str,
    /// The longest request.
    pub max_model_len: usize,
}

/// The safetensors files of a folder: the single file, or the shards its index names.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    #[derive(Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        return Err(FileError::Missing(single).into());
    }
    let index: Index = read_json(&index_path)?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Loads the model at `path`, a folder or a GGUF file.
pub fn load(path: &Path, options: &LoadOptions) -> Result<Model, ModelError> {
    load_with_progress(path, options, &|_| {})
}

/// Only the text side of the model at `path` (a folder or a GGUF file): what an API process
/// whose engine runs elsewhere needs.
pub fn load_text(path: &Path) -> Result<ModelText, ModelError> {
    if path.is_file() {
        let file = GgufFile::open(path)?;
        Ok(ModelText::from_gguf(path, file.tokenizer_data())?)
    } else {
        Ok(ModelText::load(path)?)
    }
}

/// Loads the model at `path` (a folder or a GGUF file), telling `progress` of each weight
/// tensor read.
pub fn load_with_progress(
    path: &Path,
    options: &LoadOptions,
    progress: &dyn Fn(LoadProgress),
) -> Result<Model, ModelError> {
    if path.is_file() {
        return load_gguf(path, options, progress);
    }
    let dir = path;
    let text = ModelText::load(dir)?;
    let hf: HfConfig = read_json(&dir.join("config.json"))?;
    let config = ModelConfig::from_hf(&hf)?;
    let mut weights = WeightLoader::open(&safetensors_files(dir)?, progress)?;
    let dtype = options
        .dtype
        .or_else(|| hf.torch_dtype.as_deref().and_then(Dtype::parse))
        .or_else(|| weights.stored_dtype())
        .unwrap_or(Dtype::F32);
    weights.set_dtype(dtype);
    let source = format!(
        "max_position_embeddings in {}",
        dir.join("config.json").display()
    );
    let max_model_len = check_len(options, &config, &source)?;
    let decoder = Decoder::load(config.clone(), &weights, max_model_len)?;
    Ok(Model {
        config,
        decoder,
        text,
        dtype,
        weight_type: dtype.as_str(),
        max_model_len,
    })
}

/// Loads a GGUF file: quantized weights stay in the file's map unless `options.dtype` asks
/// for them dequantized.
fn load_gguf(
    path: &Path,
    options: &LoadOptions,
    progress: &dyn Fn(LoadProgress),
) -> Result<Model, ModelError> {
    let file = GgufFile::open(path)?;
    let config = file.config()?;
    let text = ModelText::from_gguf(path, file.tokenizer_data())?;
    let source = format!(
        "{}.context_length in {}",
        file.architecture()?,
        path.display()
    );
    let max_model_len = check_len(options, &config, &source)?;
    let weights = file.weights(options.dtype, progress);
    let decoder = Decoder::load(config.clone(), &weights, max_model_len)?;
    let (dtype, weight_type) = match (options.dtype, file.weight_type()) {
        (Some(d), _) => (d, d.as_str()),
        (None, Some(t)) => (Dtype::F32, t.name()),
        (None, None) => (Dtype::F32, "f32"),
    };
    Ok(Model {
        config,
        decoder,
        text,
        dtype,
        weight_type,
        max_model_len,
    })
}

/// The longest request: asked for, else the model's context, which it may not exceed.
fn check_len(
    options: &LoadOptions,
    config: &ModelConfig,
    source: &str,
) -> Result<usize, ModelError> {
    let max_model_len = options
        .max_model_len
        .unwrap_or(config.max_position_embeddings);
    if max_model_len > config.max_position_embeddings {
        return Err(ModelError::InvalidConfig(format!(
            "max_model_len {max_model_len} exceeds the model's context of {} tokens ({source})",
            config.max_position_embeddings,
        )));
    }
    Ok(max_model_len)
}
