//! # wayfinder-text
//!
//! All the API process needs to speak a model's text, and no compute code: the tokenizer, the
//! streaming detokeniser, chat templates, stop strings, and the model folder's text files.
//! The server depends on this crate, never on `wayfinder-model`; the model crate uses it to
//! load a folder's text side next to its weights.
//!
//! # Layout
//! - [`ModelText`] (`model_text.rs`): a model folder → tokenizer, chat template, sampling
//!   defaults, end-of-sequence ids.
//! - [`gguf`]: [`GgufTokenizerData`], a GGUF file's tokenizer metadata → a tokenizer as
//!   llama.cpp builds it, and [`ModelText::from_gguf`].
//! - [`files`]: the serde types of `tokenizer_config.json`, `generation_config.json` and the
//!   `eos_token_id` of `config.json`; JSON reading whose errors name the file.
//! - [`tokenizer`]: [`Tokenizer`] (the `tokenizers` crate) and [`IncrementalDetokenizer`],
//!   streaming text that never splits a character.
//! - [`chat_template`]: [`ChatTemplate`], the model's Jinja template rendered as
//!   `transformers` renders it (`minijinja`).
//! - [`stop`]: [`StopMatcher`], stop strings over streamed text.
//! - [`synth`]: the tokenizer and template of wayfinder's synthetic models.
//! - [`TextError`]: every error; [`FileError`], a missing, unreadable or malformed file (the
//!   model crate's too), naming it.

pub mod chat_template;
mod error;
pub mod files;
pub mod gguf;
mod model_text;
pub mod stop;
pub mod synth;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{FileError, TextError};
pub use files::GenerationDefaults;
pub use gguf::GgufTokenizerData;
pub use model_text::ModelText;
pub use stop::StopMatcher;
pub use tokenizer::{IncrementalDetokenizer, Tokenizer};
