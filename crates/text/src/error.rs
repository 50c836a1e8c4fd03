//! Errors of loading and using a model's text files. Each names the file it is about.

use std::path::PathBuf;

/// Why a file of a model folder could not be had: missing, unreadable or malformed. The model
/// crate's errors use the same type for its own files (`config.json`, the weights).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A file the model needs is not in the folder (or the folder is missing).
    #[error("missing file {}", .0.display())]
    Missing(PathBuf),
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("invalid JSON in {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
}

/// Why a model's text side could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file is missing, unreadable or malformed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The tokenizer could not be loaded, trained or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
}
