//! The text-side files of a Hugging Face model folder, as serde types: `tokenizer_config.json`,
//! `generation_config.json` and the `eos_token_id` of `config.json`, and reading JSON with
//! errors that name the file.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{FileError, TextError};

/// Token ids that may be a single id or a list, as in `eos_token_id`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(u32),
    /// Several ids.
    Many(Vec<u32>),
}

impl TokenIds {
    /// As a list.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
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
    /// End-of-sequence token(s).
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

/// The one field of `config.json` the text side reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ConfigEos {
    #[serde(default)]
    pub(crate) eos_token_id: Option<TokenIds>,
}

/// A string token in `tokenizer_config.json`: plain, or an `AddedToken` object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenSpec {
    Plain(String),
    Added { content: String },
}

impl TokenSpec {
    pub(crate) fn content(&self) -> &str {
        match self {
            Self::Plain(s) | Self::Added { content: s } => s,
        }
    }
}

/// A chat template: one string, or named variants (the `default` one is used).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct NamedTemplate {
    name: String,
    template: String,
}

impl TemplateSpec {
    /// The template's source: the only one, else the `default` one, else the first.
    pub(crate) fn into_source(self) -> Option<String> {
        match self {
            Self::One(s) => Some(s),
            Self::Named(v) => v
                .iter()
                .find(|n| n.name == "default")
                .or(v.first())
                .map(|n| n.template.clone()),
        }
    }
}

/// The fields of `tokenizer_config.json` that wayfinder reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct TokenizerConfig {
    #[serde(default)]
    pub(crate) chat_template: Option<TemplateSpec>,
    #[serde(default)]
    pub(crate) bos_token: Option<TokenSpec>,
    #[serde(default)]
    pub(crate) eos_token: Option<TokenSpec>,
    #[serde(default)]
    pub(crate) add_bos_token: Option<bool>,
}

/// Reads and parses the JSON file at `path`; a missing file is [`FileError::Missing`].
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FileError::Missing(path.to_path_buf()),
        _ => FileError::Io {
            path: path.to_path_buf(),
            source,
        },
    })?;
    serde_json::from_str(&text).map_err(|source| FileError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// [`read_json`], or the default when the file does not exist.
pub(crate) fn read_optional_json<T: DeserializeOwned + Default>(
    path: &Path,
) -> Result<T, TextError> {
    if path.exists() {
        Ok(read_json(path)?)
    } else {
        Ok(T::default())
    }
}
