//! Errors of loading and using a model's text files. Each names the file it is about.

use std::path::PathBuf;

/// Why a model's text side could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file the model needs is not in the folder (or the folder is missing).
    #[error("missing file {}", .0.display())]
    MissingFile(PathBuf),
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
    /// The tokenizer could not be loaded, trained or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
}
