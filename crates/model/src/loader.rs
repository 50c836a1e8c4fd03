//! Loading a Hugging Face model folder.
//!
//! | file | needed | what is read |
//! |---|---|---|
//! | `config.json` | yes | architecture and shapes ([`crate::config`]) |
//! | `model.safetensors`, or the shards of `model.safetensors.index.json` | yes | weights, memory-mapped |
//! | `tokenizer.json` | yes | the tokenizer |
//! | `tokenizer_config.json` | no | chat template, bos/eos tokens, `add_bos_token` |
//! | `generation_config.json` | no | eos ids and sampling defaults |
//!
//! Every error names the file it is about.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::chat_template::ChatTemplate;
use crate::config::{HfConfig, ModelConfig, TokenIds};
use crate::decoder::Decoder;
use crate::error::ModelError;
use crate::tokenizer::Tokenizer;
use crate::weights::{Dtype, WeightLoader};

/// How to load.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Weight dtype; `None` keeps the checkpoint's (`--dtype auto`).
    pub dtype: Option<Dtype>,
    /// Longest request; defaults to the model's `max_position_embeddings`.
    pub max_model_len: Option<usize>,
}

/// Sampling defaults from `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationDefaults {
    /// Default temperature.
    pub temperature: Option<f32>,
    /// Default top-p.
    pub top_p: Option<f32>,
    /// Default top-k.
    pub top_k: Option<u32>,
    /// Default repetition penalty.
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
}

/// A string token in `tokenizer_config.json`: plain, or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

/// A chat template: one string, or named variants (the `default` one is used).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
struct NamedTemplate {
    name: String,
    template: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<TemplateSpec>,
    #[serde(default)]
    bos_token: Option<TokenSpec>,
    #[serde(default)]
    eos_token: Option<TokenSpec>,
    #[serde(default)]
    add_bos_token: Option<bool>,
}

/// A loaded model: weights, tokenizer, template and defaults.
#[derive(Debug)]
pub struct Model {
    /// The folder's name, as the default served model name.
    pub name: String,
    /// Runtime config.
    pub config: ModelConfig,
    /// The weights.
    pub decoder: Decoder,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template (the model's own, or the plain fallback).
    pub chat_template: ChatTemplate,
    /// Sampling defaults.
    pub generation: GenerationDefaults,
    /// Every token that ends generation unless `ignore_eos`.
    pub eos_token_ids: Vec<u32>,
    /// The dtype weights are held in.
    pub dtype: Dtype,
    /// The longest request.
    pub max_model_len: usize,
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ModelError::MissingFile(path.to_path_buf()),
        _ => ModelError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    serde_json::from_str(&text).map_err(|source| ModelError::Json {
        path: path.to_path_buf(),
        source,
    })
}

fn read_optional_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, ModelError> {
    if path.exists() {
        read_json(path)
    } else {
        Ok(T::default())
    }
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
        return Err(ModelError::MissingFile(single));
    }
    let index: Index = read_json(&index_path)?;
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// What the API layer needs of a model, without its weights: the configuration, tokenizer,
/// chat template, generation defaults and end-of-sequence tokens.
#[derive(Debug)]
pub struct TextParts {
    /// The folder's name.
    pub name: String,
    /// The architecture's configuration.
    pub config: ModelConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template.
    pub chat_template: ChatTemplate,
    /// Sampling defaults from `generation_config.json`.
    pub generation: GenerationDefaults,
    /// Every end-of-sequence token id.
    pub eos_token_ids: Vec<u32>,
    /// `torch_dtype` of `config.json`, if it names one.
    torch_dtype: Option<String>,
}

/// Loads the parts of the model in `dir` that are not weights (for an API process whose engine
/// core runs elsewhere, and as the first half of [`load`]).
pub fn load_text(dir: &Path) -> Result<TextParts, ModelError> {
    if !dir.is_dir() {
        return Err(ModelError::MissingFile(dir.to_path_buf()));
    }
    let hf: HfConfig = read_json(&dir.join("config.json"))?;
    let config = ModelConfig::from_hf(&hf)?;
    let tokenizer_config: TokenizerConfig = read_optional_json(&dir.join("tokenizer_config.json"))?;
    let generation: GenerationDefaults = read_optional_json(&dir.join("generation_config.json"))?;
    let tokenizer_path = dir.join("tokenizer.json");
    let add_bos = tokenizer_config.add_bos_token.unwrap_or(false);
    let bos_text = tokenizer_config
        .bos_token
        .as_ref()
        .map(|t| t.content().to_owned());
    let tokenizer = Tokenizer::from_file(
        &tokenizer_path,
        add_bos.then_some(bos_text.as_deref()).flatten(),
    )?;

    let mut eos: Vec<u32> = Vec::new();
    eos.extend(
        generation
            .eos_token_id
            .as_ref()
            .map(TokenIds::to_vec)
            .unwrap_or_default(),
    );
    eos.extend(&config.eos_token_ids);
    if let Some(id) = tokenizer_config
        .eos_token
        .as_ref()
        .and_then(|t| tokenizer.token_to_id(t.content()))
    {
        eos.push(id);
    }
    eos.sort_unstable();
    eos.dedup();

    let template_source = tokenizer_config.chat_template.and_then(|t| match t {
        TemplateSpec::One(s) => Some(s),
        TemplateSpec::Named(v) => v
            .iter()
            .find(|n| n.name == "default")
            .or(v.first())
            .map(|n| n.template.clone()),
    });
    let chat_template = ChatTemplate::new(
        template_source.as_deref(),
        bos_text.unwrap_or_default(),
        tokenizer_config
            .eos_token
            .as_ref()
            .map(|t| t.content().to_owned())
            .unwrap_or_default(),
    )
    .map_err(|e| match e {
        ModelError::Template(m) => ModelError::Template(format!(
            "{}: {m}",
            dir.join("tokenizer_config.json").display()
        )),
        other => other,
    })?;
    let name = dir
        .file_name()
        .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
    Ok(TextParts {
        name,
        config,
        tokenizer,
        chat_template,
        generation,
        eos_token_ids: eos,
        torch_dtype: hf.torch_dtype,
    })
}

/// Loads the model in `dir`.
pub fn load(dir: &Path, options: &LoadOptions) -> Result<Model, ModelError> {
    let text = load_text(dir)?;
    let weights = WeightLoader::open(&safetensors_files(dir)?)?;
    let dtype = options
        .dtype
        .or_else(|| text.torch_dtype.as_deref().and_then(Dtype::parse))
        .or_else(|| weights.stored_dtype())
        .unwrap_or(Dtype::F32);
    let config = text.config;
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
    weights.finish();
    Ok(Model {
        name: text.name,
        config,
        decoder,
        tokenizer: text.tokenizer,
        chat_template: text.chat_template,
        generation: text.generation,
        eos_token_ids: text.eos_token_ids,
        dtype,
        max_model_len,
    })
}
