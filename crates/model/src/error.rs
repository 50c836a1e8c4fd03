//! Errors of model loading and running. Each names the file or tensor it is about.

use std::path::PathBuf;

use wayfinder_text::{FileError, TextError};

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file is missing, unreadable or malformed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The model uses something wayfinder does not implement.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// `config.json` is inconsistent.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// A weight is absent from every safetensors file.
    #[error("tensor {name:?} not found in {}", file.display())]
    MissingTensor {
        /// The tensor's name.
        name: String,
        /// The file (or index) searched.
        file: PathBuf,
    },
    /// A weight has the wrong shape for the config.
    #[error("tensor {name:?} in {} has shape {got:?}, expected {expected:?}", file.display())]
    ShapeMismatch {
        /// The tensor's name.
        name: String,
        /// Where it came from.
        file: PathBuf,
        /// The shape `config.json` implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A safetensors file is malformed.
    #[error("invalid safetensors file {}: {message}", path.display())]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A GGUF file's header is malformed.
    #[error("invalid GGUF file {}: {message}", path.display())]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The tokenizer or chat template could not be loaded or made.
    #[error(transparent)]
    Text(TextError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The OS refused the KV store's memory.
    #[error(
        "cannot reserve {bytes} bytes for the KV cache (lower --kv-cache-memory or \
         --num-kv-blocks): {error}"
    )]
    KvStore {
        /// The bytes asked for (wider than `usize`: a size past the address space is named
        /// as it is, not wrapped).
        bytes: u128,
        /// The OS's answer (in the message, so not also a source).
        error: std::io::Error,
    },
}

impl From<TextError> for ModelError {
    /// A file error stays a file error, whichever side read the file.
    fn from(e: TextError) -> Self {
        match e {
            TextError::File(f) => Self::File(f),
            other => Self::Text(other),
        }
    }
}
