//! `wayfinder serve [MODEL]`: load a model, start the engine with the real [`ModelExecutor`],
//! and serve the OpenAI API until SIGINT or SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use wayfinder_core::{EngineConfig, EngineHandle, SamplingParams, SchedulerConfig};
use wayfinder_model::{KvCacheSize, LoadOptions, ModelExecutor};
use wayfinder_server::{AppState, Limits, ServerParts};
use wayfinder_trace::{CoreObserver, ProcessRole};

use crate::model_arg;

/// Options of `serve`; names follow vLLM's where vLLM has them.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A Hugging Face model folder, `demo` (the built-in random-weight model), or a shape name
    /// (smollm2-135m, qwen2.5-0.5b).
    #[arg(default_value = "demo")]
    model: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The name clients send as `model`; defaults to MODEL as given.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Longest request, prompt plus output; defaults to the model's context, capped by the KV
    /// cache's capacity.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// Most requests running at once.
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    /// Most tokens computed in one engine step.
    #[arg(long, default_value_t = 2048)]
    max_num_batched_tokens: usize,
    /// Tokens per KV block.
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// KV cache size in bytes; accepts suffixes such as 512MiB, 2GiB, 1GB.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    kv_cache_memory: u64,
    /// KV cache size in blocks (overrides --kv-cache-memory).
    #[arg(long)]
    num_kv_blocks: Option<usize>,
    /// Weight dtype: auto, f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "WAYFINDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests allowed to wait beyond --max-num-seqs; more get 429.
    #[arg(long, default_value_t = 256)]
    max_waiting_requests: usize,
    /// Seconds requests in flight may take to finish after SIGINT/SIGTERM before being aborted.
    #[arg(long, default_value_t = 30.0)]
    shutdown_timeout: f64,
    /// Journey tracing (docs/JOURNEY_TRACING.md).
    #[command(flatten)]
    tracing: crate::tracing_args::TracingArgs,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let dtype = model_arg::parse_dtype(&args.dtype)?;
    ModelExecutor::check_block_size(args.block_size).context("--block-size")?;
    let dir = model_arg::resolve(&args.model, dtype)?;
    let model = wayfinder_model::load(
        &dir,
        &LoadOptions {
            dtype,
            max_model_len: args.max_model_len,
        },
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    let size = match args.num_kv_blocks {
        Some(n) => KvCacheSize::Blocks(n),
        None => KvCacheSize::Bytes(args.kv_cache_memory),
    };
    let num_blocks = size.num_blocks(&model.config, args.block_size);
    let capacity = num_blocks * args.block_size;
    anyhow::ensure!(
        capacity > 0,
        "the KV cache holds no block of {} tokens; give it more memory (--kv-cache-memory) or \
         blocks (--num-kv-blocks)",
        args.block_size
    );
    let max_model_len = match args.max_model_len {
        Some(m) if m > capacity => anyhow::bail!(
            "--max-model-len {m} exceeds the KV cache capacity of {capacity} tokens \
             ({num_blocks} blocks of {}); lower it or raise --kv-cache-memory / --num-kv-blocks",
            args.block_size
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
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.model.clone());
    let used_dtype = model.dtype;
    let eos_token_ids = model.eos_token_ids.clone();
    let executor = ModelExecutor::new(model.decoder, num_blocks, args.block_size);
    let kv_bytes = executor.kv_cache_bytes();
    let telemetry = args.tracing.init(ProcessRole::All)?;
    // Flushes the spans on every way out, errors included.
    let _flush = telemetry
        .as_ref()
        .map(wayfinder_trace::Telemetry::shutdown_guard);
    let observer = telemetry
        .as_ref()
        .map(|t| Box::new(CoreObserver::new(t)) as Box<dyn wayfinder_core::JourneyObserver>);
    let engine = EngineHandle::spawn(
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: args.max_num_seqs,
                max_num_batched_tokens: args.max_num_batched_tokens,
                max_model_len,
                block_size: args.block_size,
                num_blocks,
                ..SchedulerConfig::default()
            },
            eos_token_ids: eos_token_ids.clone(),
            seed: None,
        },
        Box::new(executor),
        observer,
    )?;
    let state = AppState::new(ServerParts {
        engine: engine.clone(),
        tokenizer: Arc::new(model.tokenizer),
        chat_template: Arc::new(model.chat_template),
        model_name: name.clone(),
        max_model_len,
        eos_token_ids,
        limits: Limits {
            max_num_seqs: args.max_num_seqs,
            max_waiting_requests: args.max_waiting_requests,
            shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout.max(0.0)),
            ..Limits::default()
        },
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        sampling_defaults: sampling_defaults(&model.generation),
        tracing: telemetry.clone(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wayfinder-http")
        .build()
        .context("starting the async runtime")?;
    let served = runtime.block_on(async {
        let listener = TcpListener::bind((args.host.as_str(), args.port))
            .await
            .with_context(|| format!("binding {}:{}", args.host, args.port))?;
        let addr = listener.local_addr()?;
        tracing::info!(
            address = %format!("http://{addr}"),
            model = %name,
            folder = %dir.display(),
            dtype = used_dtype.as_str(),
            kv_blocks = num_blocks,
            kv_tokens = capacity,
            kv_mib = kv_bytes / (1 << 20),
            max_model_len,
            auth = args.api_key.is_some(),
            journey_tracing = telemetry.is_some(),
            "serving the OpenAI API"
        );
        wayfinder_server::run(listener, state, shutdown_signal())
            .await
            .context("serving")
    });
    engine.shutdown();
    tracing::info!("stopped");
    served
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

/// Parses a byte count with an optional unit: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB
/// (powers of 1024); K/M/G alone are binary.
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 1GiB or 512MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    Ok((value * scale as f64) as u64)
}

/// OpenAI's sampling defaults, overridden by the model's `generation_config.json`.
fn sampling_defaults(g: &wayfinder_model::loader::GenerationDefaults) -> SamplingParams {
    let base = SamplingParams::default();
    SamplingParams {
        temperature: g.temperature.unwrap_or(base.temperature),
        top_p: g.top_p.unwrap_or(base.top_p),
        top_k: g.top_k.unwrap_or(base.top_k),
        repetition_penalty: g.repetition_penalty.unwrap_or(base.repetition_penalty),
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert_eq!(parse_bytes("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert_eq!(parse_bytes("1234"), Ok(1234));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }
}
