//! Loading a Hugging Face model folder: the weights here, the text side through
//! [`wayfinder_text::ModelText`].
//!
//! | file | needed | what is read |
//! |---|---|---|
//! | `config.json` | yes | architecture and shapes ([`crate::arch`]) |
//! | `model.safetensors`, or the shards of `model.safetensors.index.json` | yes | weights, memory-mapped ([`weights`]) |
//! | `tokenizer.json`, `tokenizer_config.json`, `generation_config.json` | see [`wayfinder_text::ModelText`] | tokenizer, template, eos ids, sampling defaults |
//!
//! Every error names the file it is about. Progress is reported through a callback
//! ([`load_with_progress`]); the library draws nothing on a terminal.

pub mod weights;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use wayfinder_text::files::read_json;
use wayfinder_text::{FileError, ModelText};

use crate::arch::{HfConfig, ModelConfig};
use crate::decoder::Decoder;
use crate::error::ModelError;
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
    /// The dtype weights are held in.
    pub dtype: Dtype,
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

/// Loads the model in `dir`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Model, ModelError> {
    load_with_progress(dir, options, &|_| {})
}

/// Loads the model in `dir`, telling `progress` of each weight tensor read.
pub fn load_with_progress(
    dir: &Path,
    options: &LoadOptions,
    progress: &dyn Fn(LoadProgress),
) -> Result<Model, ModelError> {
    let text = ModelText::load(dir)?;
    let hf: HfConfig = read_json(&dir.join("config.json"))?;
    let config = ModelConfig::from_hf(&hf)?;
    let weights = WeightLoader::open(&safetensors_files(dir)?, progress)?;
    let dtype = options
        .dtype
        .or_else(|| hf.torch_dtype.as_deref().and_then(Dtype::parse))
        .or_else(|| weights.stored_dtype())
        .unwrap_or(Dtype::F32);
    let max_model_len = options
        .max_model_len
        .unwrap_or(config.max_position_embeddings);
    if max_model_len > config.max_position_embeddings {
        return Err(ModelError::InvalidConfig(format!(
            "max_model_len {max_model_len} exceeds the model's context of {} tokens \
             (max_position_embeddings in {})",
            config.max_position_embeddings,
            dir.join("config.json").display()
        )));
    }
    let decoder = Decoder::load(config.clone(), &weights, dtype, max_model_len)?;
    Ok(Model {
        config,
        decoder,
        text,
        dtype,
        max_model_len,
    })
}
