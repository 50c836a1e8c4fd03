//! [`ModelText`]: everything the API process needs of a model folder to speak text — the
//! tokenizer, the chat template, the sampling defaults and the end-of-sequence tokens — and
//! none of its weights.
//!
//! It comes from a model folder ([`ModelText::load`], the files below) or from a GGUF file's
//! tokenizer metadata ([`ModelText::from_gguf`], in `gguf.rs`).
//!
//! | file | needed | what is read |
//! |---|---|---|
//! | `config.json` | yes | `eos_token_id` |
//! | `tokenizer.json` | yes | the tokenizer |
//! | `tokenizer_config.json` | no | chat template, bos/eos tokens, `add_bos_token` |
//! | `generation_config.json` | no | eos ids and sampling defaults |

use std::path::{Path, PathBuf};

use crate::chat_template::ChatTemplate;
use crate::error::{FileError, TextError};
use crate::files::{
    ConfigEos, GenerationDefaults, TokenIds, TokenizerConfig, read_json, read_optional_json,
};
use crate::tokenizer::Tokenizer;

/// The text side of a model.
#[derive(Debug)]
pub struct ModelText {
    /// The folder's name, as the default served model name.
    pub name: String,
    /// The folder it was read from.
    pub folder: PathBuf,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template (the model's own, or the plain fallback).
    pub chat_template: ChatTemplate,
    /// Sampling defaults from `generation_config.json`.
    pub generation: GenerationDefaults,
    /// Every token that ends generation unless `ignore_eos`, sorted, without repeats.
    pub eos_token_ids: Vec<u32>,
}

impl ModelText {
    /// Loads the text side of the model folder `dir`.
    pub fn load(dir: &Path) -> Result<Self, TextError> {
        if !dir.is_dir() {
            return Err(FileError::Missing(dir.to_path_buf()).into());
        }
        let config: ConfigEos = read_json(&dir.join("config.json"))?;
        let tokenizer_config: TokenizerConfig =
            read_optional_json(&dir.join("tokenizer_config.json"))?;
        let generation: GenerationDefaults =
            read_optional_json(&dir.join("generation_config.json"))?;
        let add_bos = tokenizer_config.add_bos_token.unwrap_or(false);
        let bos_text = tokenizer_config
            .bos_token
            .as_ref()
            .map(|t| t.content().to_owned());
        let tokenizer = Tokenizer::from_file(
            &dir.join("tokenizer.json"),
            add_bos.then_some(bos_text.as_deref()).flatten(),
        )?;

        let mut eos: Vec<u32> = [&generation.eos_token_id, &config.eos_token_id]
            .into_iter()
            .flatten()
            .flat_map(TokenIds::to_vec)
            .collect();
        if let Some(id) = tokenizer_config
            .eos_token
            .as_ref()
            .and_then(|t| tokenizer.token_to_id(t.content()))
        {
            eos.push(id);
        }
        eos.sort_unstable();
        eos.dedup();

        let eos_text = tokenizer_config
            .eos_token
            .as_ref()
            .map(|t| t.content().to_owned())
            .unwrap_or_default();
        let template_source = tokenizer_config.chat_template.and_then(|t| t.into_source());
        let chat_template = ChatTemplate::new(
            template_source.as_deref(),
            bos_text.unwrap_or_default(),
            eos_text,
        )
        .map_err(|e| match e {
            TextError::Template(m) => TextError::Template(format!(
                "{}: {m}",
                dir.join("tokenizer_config.json").display()
            )),
            other => other,
        })?;
        let name = dir
            .file_name()
            .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            name,
            folder: dir.to_path_buf(),
            tokenizer,
            chat_template,
            generation,
            eos_token_ids: eos,
        })
    }
}
