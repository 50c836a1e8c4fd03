//! The built-in `demo` model: a small Llama (4 layers, hidden 256) with random weights from a
//! fixed seed, a byte-level BPE tokenizer and a ChatML template. Its output is not language; it
//! exists so that the whole system runs on a fresh machine without downloads.
//!
//! It is written into a cache folder on first use — `$WAYFINDER_CACHE/demo-v1`, else
//! `$XDG_CACHE_HOME/wayfinder/demo-v1`, else `~/.cache/wayfinder/demo-v1` — and then loaded
//! through the same loader as any Hugging Face folder. The folder is written under a temporary
//! name and renamed into place, so a crash never leaves a half-written model behind.

use std::path::{Path, PathBuf};

use super::{published_shape, write_model};
use wayfinder_text::FileError;

use crate::error::ModelError;
use crate::load::weights::Dtype;

/// The seed of the demo weights. Changing it (or the shape) needs a new folder version.
const DEMO_SEED: u64 = 20_261_121;
const DEMO_DIR: &str = "demo-v1";

/// The name `wayfinder serve` accepts for the demo model.
pub const DEMO_NAME: &str = "demo";

/// The cache folder wayfinder writes into.
pub fn cache_root() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    env("WAYFINDER_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|p| p.join("wayfinder")))
        .or_else(|| env("HOME").map(|p| p.join(".cache").join("wayfinder")))
        .unwrap_or_else(|| std::env::temp_dir().join("wayfinder"))
}

/// The demo model's folder under `root`, written first if it is not there yet.
pub fn ensure_demo(root: &Path) -> Result<PathBuf, ModelError> {
    let dir = root.join(DEMO_DIR);
    if dir.join("config.json").is_file() {
        return Ok(dir);
    }
    let spec = published_shape(DEMO_NAME).expect("the demo shape exists");
    let tmp = root.join(format!("{DEMO_DIR}.tmp-{}", std::process::id()));
    write_model(&tmp, &spec, DEMO_SEED, Dtype::F32, None)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished first: use its copy.
        Err(_) if dir.join("config.json").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(dir)
        }
        Err(source) => Err(FileError::Io { path: dir, source }.into()),
    }
}
