//! Resolving a `MODEL` argument: a Hugging Face folder, a GGUF file, `demo`, a published
//! shape name (generated into the cache on first use), or a Hugging Face Hub id (downloaded
//! into the Hub's cache, `hub.rs`); and loading it, with a progress bar on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use wayfinder_model::synth::demo::{DEMO_NAME, cache_root, ensure_demo};
use wayfinder_model::synth::{PUBLISHED_SHAPES, published_shape, write_model};
use wayfinder_model::{Dtype, LoadOptions, LoadProgress, Model};

use crate::hub::{self, HubModel};

/// Parses `--dtype`: `auto` is `None`.
pub(crate) fn parse_dtype(s: &str) -> anyhow::Result<Option<Dtype>> {
    if s == "auto" {
        return Ok(None);
    }
    Dtype::parse(s)
        .map(Some)
        .with_context(|| format!("unknown dtype {s:?}; expected auto, f32, bf16 or f16"))
}

/// How a Hub id is fetched: `--revision` and `--gguf-file`, when given.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct HubFlags<'a> {
    /// The branch, tag or commit; `main` when `None`.
    pub(crate) revision: Option<&'a str>,
    /// The GGUF file to fetch instead of the safetensors folder.
    pub(crate) gguf_file: Option<&'a str>,
}

/// The folder or GGUF file to load for `model`, with no Hub flags.
pub(crate) fn resolve(model: &str, dtype: Option<Dtype>) -> anyhow::Result<PathBuf> {
    resolve_with(model, dtype, HubFlags::default())
}

/// The folder or GGUF file to load for `model`: an existing path, `demo`, a shape name, and
/// else a Hugging Face Hub id, in that order.
pub(crate) fn resolve_with(
    model: &str,
    dtype: Option<Dtype>,
    hub_flags: HubFlags<'_>,
) -> anyhow::Result<PathBuf> {
    if is_local(model)
        && let Some(flag) = hub_flags_given(hub_flags)
    {
        anyhow::bail!("{flag} applies to Hugging Face Hub ids only, and {model:?} is local");
    }
    if let Some(local) = resolve_local(model, dtype)? {
        return Ok(local);
    }
    let Some(mut id) = HubModel::parse(model) else {
        anyhow::bail!(
            "{model:?} is neither a model folder, a GGUF file, `demo`, a known shape ({}), nor \
             a Hugging Face Hub id (owner/name, or owner/name:FILE.gguf)",
            shape_names()
        );
    };
    if let Some(file) = hub_flags.gguf_file {
        anyhow::ensure!(
            hub::is_gguf_name(file),
            "--gguf-file {file:?} is not a .gguf file name"
        );
        if let Some(named) = &id.gguf_file
            && named != file
        {
            anyhow::bail!("{model:?} names {named}, but --gguf-file names {file}");
        }
        id.gguf_file = Some(file.to_owned());
    }
    let revision = hub_flags.revision.unwrap_or(hub::DEFAULT_REVISION);
    hub::HubEnv::from_env()
        .and_then(|env| hub::fetch(&id, revision, &env))
        .with_context(|| {
            format!("{model:?} is not a folder, file, `demo` or shape; as a Hugging Face Hub id")
        })
}

/// The published shapes' names, `demo` aside.
fn shape_names() -> String {
    let names: Vec<&str> = PUBLISHED_SHAPES
        .into_iter()
        .filter(|s| *s != DEMO_NAME)
        .collect();
    names.join(", ")
}

/// The first Hub flag given, for the error when the model is local.
fn hub_flags_given(flags: HubFlags<'_>) -> Option<&'static str> {
    if flags.revision.is_some() {
        Some("--revision")
    } else if flags.gguf_file.is_some() {
        Some("--gguf-file")
    } else {
        None
    }
}

/// Whether `model` is an existing path, `demo` or a shape name.
fn is_local(model: &str) -> bool {
    let path = Path::new(model);
    path.is_dir() || path.is_file() || model == DEMO_NAME || published_shape(model).is_some()
}

/// `model` as an existing path, `demo` or a shape name (written into the cache first if
/// needed); `None` if it is none of these.
fn resolve_local(model: &str, dtype: Option<Dtype>) -> anyhow::Result<Option<PathBuf>> {
    let path = PathBuf::from(model);
    if path.is_dir() || path.is_file() {
        return Ok(Some(path));
    }
    let root = cache_root();
    if model == DEMO_NAME {
        return ensure_demo(&root)
            .map(Some)
            .context("writing the demo model");
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
        return Ok(Some(dir));
    }
    Ok(None)
}

/// Loads the model in `dir` (a folder or a GGUF file), drawing the weights' progress on stderr when it is a terminal.
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
