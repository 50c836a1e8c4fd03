//! Resolving a `MODEL` argument: a Hugging Face folder, `demo`, or a published shape name
//! (generated into the cache on first use); and loading it, with a progress bar on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use wayfinder_model::synth::demo::{DEMO_NAME, cache_root, ensure_demo};
use wayfinder_model::synth::{published_shape, write_model};
use wayfinder_model::{Dtype, LoadOptions, LoadProgress, Model};

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

/// Loads the model in `dir`, drawing the weights' progress on stderr when it is a terminal.
pub(crate) fn load(dir: &Path, options: &LoadOptions) -> anyhow::Result<Model> {
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(0).with_style(
            ProgressStyle::with_template("loading weights {bar:40} {pos}/{len} tensors")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        )
    } else {
        ProgressBar::hidden()
    };
    let model = wayfinder_model::load_with_progress(dir, options, &|p: LoadProgress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.loaded as u64);
    });
    bar.finish_and_clear();
    model.with_context(|| format!("loading {}", dir.display()))
}
