//! Resolving a `MODEL` argument: a Hugging Face folder, `demo`, or a published shape name
//! (generated into the cache on first use).

use std::path::PathBuf;

use anyhow::Context;
use wayfinder_model::Dtype;
use wayfinder_model::demo::{DEMO_NAME, cache_root, ensure_demo};
use wayfinder_model::synth::{published_shape, write_model};

/// Parses `--dtype`: `auto` is `None`.
pub(crate) fn parse_dtype(s: &str) -> anyhow::Result<Option<Dtype>> {
    if s == "auto" {
        return Ok(None);
    }
    Dtype::parse(s)
        .map(Some)
        .with_context(|| format!("unknown dtype {s:?}; expected auto, f32, bf16 or f16"))
}

/// The folder to load for `model`.
pub(crate) fn resolve(model: &str, dtype: Option<Dtype>) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from(model);
    if path.is_dir() {
        return Ok(path);
    }
    let root = cache_root();
    if model == DEMO_NAME {
        return ensure_demo(&root).context("writing the demo model");
    }
    if let Some(spec) = published_shape(model) {
        let dtype = dtype.unwrap_or(Dtype::F32);
        let dir = root
            .join("shapes")
            .join(format!("{model}-{}", dtype.as_str()));
        if !dir.join("config.json").is_file() {
            tracing::info!(shape = model, dir = %dir.display(), "writing a random-weight model");
            write_model(&dir, &spec, 0, dtype, None)
                .with_context(|| format!("writing {}", dir.display()))?;
        }
        return Ok(dir);
    }
    anyhow::bail!("{model:?} is neither a model folder, `demo`, nor a known shape")
}
