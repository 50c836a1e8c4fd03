//! # wayfinder
//!
//! The command-line entry point.
//!
//! - `wayfinder serve [MODEL]`: the OpenAI-compatible API on a GGUF file, a model folder, a
//!   Hugging Face Hub id (`hub.rs`), `demo` or a shape;
//!   the engine in process, in an `engine-core` child (`--engine-process`) or at an address.
//! - `wayfinder engine-core --listen ADDR [MODEL]`: the engine core alone, for API servers.
//! - `wayfinder make-model --shape NAME --out DIR`: a random-weight model of a published shape.
//! - `wayfinder bench throughput`: the engine alone (no HTTP) on a real model.
//! - `wayfinder bench serve`: load any OpenAI-compatible server; latency percentiles.
//!
//! Beside the commands: `engine_args.rs` (the engine's flags and starting it), `model_arg.rs`
//! (resolving and loading `MODEL`, with the weights' progress bar), `tracing_args.rs` (journey
//! tracing's flags), `units.rs` (sizes and seconds as flag values).

mod bench_serve;
mod bench_throughput;
mod engine_args;
mod engine_core;
mod hub;
mod model_arg;
mod serve;
mod tracing_args;
mod units;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wayfinder_model::synth::{PUBLISHED_SHAPES, published_shape, write_model};

/// mimalloc: glibc's malloc spent about a third of a request's CPU in cross-thread frees
/// (perf on `cargo bench -p wayfinder-server --bench tracing_overhead`, which uses it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wayfinder: an OpenAI-compatible LLM inference server with request journey tracing.
#[derive(Debug, Parser)]
#[command(name = "wayfinder", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the OpenAI-compatible API.
    Serve(serve::Args),
    /// Run the engine core alone, serving API servers over the engine protocol.
    EngineCore(engine_core::Args),
    /// Write a random-weight model of a published shape, as a Hugging Face folder.
    MakeModel(MakeModelArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Engine throughput without HTTP: prefill and decode tokens/s.
    Throughput(bench_throughput::Args),
    /// Load an OpenAI-compatible server: latency percentiles and throughput.
    Serve(bench_serve::Args),
}

#[derive(Debug, clap::Args)]
struct MakeModelArgs {
    /// The shape: smollm2-135m, qwen2.5-0.5b or demo.
    #[arg(long)]
    shape: String,
    /// The folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Weight dtype: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// RNG seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: piped logs (files, journald, tests) stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::EngineCore(args) => engine_core::run(&args),
        Command::MakeModel(args) => make_model(&args),
        Command::Bench(BenchCommand::Throughput(args)) => bench_throughput::run(&args),
        Command::Bench(BenchCommand::Serve(args)) => bench_serve::run(&args),
    }
}

fn make_model(args: &MakeModelArgs) -> anyhow::Result<()> {
    let spec = published_shape(&args.shape).with_context(|| {
        format!(
            "unknown shape {:?}; known: {}",
            args.shape,
            PUBLISHED_SHAPES.join(", ")
        )
    })?;
    let dtype = model_arg::parse_dtype(&args.dtype)?
        .context("make-model needs a concrete dtype: f32, bf16 or f16")?;
    write_model(&args.out, &spec, args.seed, dtype, None)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "wrote {} ({}) to {}",
        args.shape,
        dtype.as_str(),
        args.out.display()
    );
    Ok(())
}
