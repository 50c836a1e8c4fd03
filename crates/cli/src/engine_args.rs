//! The engine's flags — model, dtype, KV cache, batching — shared by `serve` (which runs the
//! engine in process or hands the flags to its engine-core child) and `engine-core`, and the
//! engine they start.

use std::ffi::OsString;

use anyhow::Context;
use wayfinder_core::{EngineConfig, EngineHandle, JourneyObserver, SchedulerConfig};
use wayfinder_model::{KvCacheSize, LoadOptions, ModelExecutor};
use wayfinder_text::ModelText;

use crate::model_arg;

/// The engine's flags; names follow vLLM's.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct EngineArgs {
    /// A Hugging Face model folder, a GGUF file, `demo` (the built-in random-weight model), a shape name
    /// (smollm2-135m, qwen2.5-0.5b), or a Hugging Face Hub id, `owner/name` or
    /// `owner/name:FILE.gguf`, downloaded into the Hugging Face cache (HF_HOME, HF_ENDPOINT,
    /// HF_TOKEN, HF_HUB_OFFLINE).
    #[arg(default_value = "demo")]
    pub(crate) model: String,
    /// The Hub revision of MODEL: a branch, tag or commit [default: main].
    #[arg(long)]
    pub(crate) revision: Option<String>,
    /// The GGUF file of the Hub repo MODEL to fetch, instead of its safetensors folder.
    #[arg(long)]
    pub(crate) gguf_file: Option<String>,
    /// Longest request, prompt plus output; defaults to the model's context, capped by the KV
    /// cache's capacity.
    #[arg(long)]
    pub(crate) max_model_len: Option<usize>,
    /// Most requests running at once.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_num_seqs: usize,
    /// Most tokens computed in one engine step.
    #[arg(long, default_value_t = 2048)]
    pub(crate) max_num_batched_tokens: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    pub(crate) block_size: usize,
    /// KV cache size in bytes; accepts suffixes such as 512MiB, 2GiB, 1GB.
    #[arg(long, default_value = "1GiB", value_parser = crate::units::parse_bytes)]
    pub(crate) kv_cache_memory: u64,
    /// KV cache size in blocks (overrides --kv-cache-memory).
    #[arg(long)]
    pub(crate) num_kv_blocks: Option<usize>,
    /// Weight dtype: auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    pub(crate) dtype: String,
    /// Reuse the KV of prompt prefixes already computed (automatic prefix caching; the
    /// default).
    #[arg(long, overrides_with = "no_enable_prefix_caching")]
    pub(crate) enable_prefix_caching: bool,
    /// Compute every prompt from its first token.
    #[arg(long, overrides_with = "enable_prefix_caching")]
    pub(crate) no_enable_prefix_caching: bool,
}

/// A running local engine and what it was built from.
pub(crate) struct LocalEngine {
    pub(crate) handle: EngineHandle,
    pub(crate) model: ModelText,
    pub(crate) max_model_len: usize,
    pub(crate) num_blocks: usize,
    pub(crate) kv_bytes: usize,
    pub(crate) dtype: &'static str,
}

impl EngineArgs {
    /// The model folder or GGUF file these flags name (writing the demo model or a shape, or
    /// downloading from the Hugging Face Hub, first if needed).
    pub(crate) fn folder(&self) -> anyhow::Result<std::path::PathBuf> {
        model_arg::resolve_with(
            &self.model,
            model_arg::parse_dtype(&self.dtype)?,
            model_arg::HubFlags {
                revision: self.revision.as_deref(),
                gguf_file: self.gguf_file.as_deref(),
            },
        )
    }

    /// Loads the model and starts the engine on it, with `observer`.
    pub(crate) fn start(
        &self,
        observer: Option<Box<dyn JourneyObserver>>,
    ) -> anyhow::Result<LocalEngine> {
        let dtype = model_arg::parse_dtype(&self.dtype)?;
        ModelExecutor::check_block_size(self.block_size).context("--block-size")?;
        let dir = self.folder()?;
        let model = model_arg::load(
            &dir,
            &LoadOptions {
                dtype,
                max_model_len: self.max_model_len,
            },
        )?;
        let size = match self.num_kv_blocks {
            Some(n) => KvCacheSize::Blocks(n),
            None => KvCacheSize::Bytes(self.kv_cache_memory),
        };
        let num_blocks = size.num_blocks(&model.config, self.block_size);
        let capacity = num_blocks * self.block_size;
        anyhow::ensure!(
            capacity > 0,
            "the KV cache holds no block of {} tokens; give it more memory (--kv-cache-memory) \
             or blocks (--num-kv-blocks)",
            self.block_size
        );
        let max_model_len = match self.max_model_len {
            Some(m) if m > capacity => anyhow::bail!(
                "--max-model-len {m} exceeds the KV cache capacity of {capacity} tokens \
                 ({num_blocks} blocks of {}); lower it or raise --kv-cache-memory / \
                 --num-kv-blocks",
                self.block_size
            ),
            Some(m) => m,
            None if model.max_model_len > capacity => {
                tracing::info!(
                    model_len = model.max_model_len,
                    capacity,
                    "max_model_len capped to the KV cache capacity"
                );
                capacity
            }
            None => model.max_model_len,
        };
        let dtype = model.weight_type;
        let executor = ModelExecutor::try_new(model.decoder, num_blocks, self.block_size)?;
        let kv_bytes = executor.kv_cache_bytes();
        let handle = EngineHandle::spawn(
            EngineConfig {
                scheduler: SchedulerConfig {
                    max_num_seqs: self.max_num_seqs,
                    max_num_batched_tokens: self.max_num_batched_tokens,
                    max_model_len,
                    block_size: self.block_size,
                    num_blocks,
                    enable_prefix_caching: self.prefix_caching(),
                    ..SchedulerConfig::default()
                },
                eos_token_ids: model.text.eos_token_ids.clone(),
                seed: None,
            },
            Box::new(executor),
            observer,
        )?;
        Ok(LocalEngine {
            handle,
            model: model.text,
            max_model_len,
            num_blocks,
            kv_bytes,
            dtype,
        })
    }

    /// Whether the prefix cache is on: unless the last of the pair of flags turned it off.
    pub(crate) fn prefix_caching(&self) -> bool {
        !self.no_enable_prefix_caching
    }

    /// Only the text side of the model, for an API process whose engine runs elsewhere.
    pub(crate) fn load_text(&self) -> anyhow::Result<ModelText> {
        let dir = self.folder()?;
        wayfinder_model::load_text(&dir).with_context(|| format!("loading {}", dir.display()))
    }

    /// These flags as arguments, to hand to an `engine-core` child.
    pub(crate) fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![self.model.clone().into()];
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}").into());
            args.push(value.into());
        };
        if let Some(r) = &self.revision {
            flag("revision", r.clone());
        }
        if let Some(f) = &self.gguf_file {
            flag("gguf-file", f.clone());
        }
        if let Some(m) = self.max_model_len {
            flag("max-model-len", m.to_string());
        }
        flag("max-num-seqs", self.max_num_seqs.to_string());
        flag(
            "max-num-batched-tokens",
            self.max_num_batched_tokens.to_string(),
        );
        flag("block-size", self.block_size.to_string());
        flag("kv-cache-memory", self.kv_cache_memory.to_string());
        if let Some(n) = self.num_kv_blocks {
            flag("num-kv-blocks", n.to_string());
        }
        flag("dtype", self.dtype.clone());
        if !self.prefix_caching() {
            args.push("--no-enable-prefix-caching".into());
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use clap::Parser;

    use super::EngineArgs;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    fn parse(args: impl IntoIterator<Item = OsString>) -> EngineArgs {
        let argv = std::iter::once(OsString::from("wayfinder")).chain(args);
        Cli::try_parse_from(argv).expect("parses").engine
    }

    #[test]
    fn hub_flags_reach_the_engine_core_child() {
        let args = parse(
            ["org/name", "--revision", "v1", "--gguf-file", "m.gguf"]
                .into_iter()
                .map(OsString::from),
        );
        let child = parse(args.to_args());
        assert_eq!(child.model, "org/name");
        assert_eq!(child.revision.as_deref(), Some("v1"));
        assert_eq!(child.gguf_file.as_deref(), Some("m.gguf"));

        let plain = parse(args.to_args().into_iter().take(1));
        assert_eq!(
            plain
                .to_args()
                .iter()
                .filter(|a| *a == "--revision")
                .count(),
            0
        );
    }

    #[test]
    fn prefix_caching_is_on_unless_the_last_flag_says_off_and_the_child_is_told() {
        let with = |flags: &[&str]| parse(flags.iter().map(OsString::from));
        assert!(with(&[]).prefix_caching());
        assert!(!with(&["--no-enable-prefix-caching"]).prefix_caching());
        assert!(with(&["--no-enable-prefix-caching", "--enable-prefix-caching"]).prefix_caching());
        assert!(!with(&["--enable-prefix-caching", "--no-enable-prefix-caching"]).prefix_caching());
        assert!(!parse(with(&["--no-enable-prefix-caching"]).to_args()).prefix_caching());
        assert!(parse(with(&[]).to_args()).prefix_caching());
    }
}
