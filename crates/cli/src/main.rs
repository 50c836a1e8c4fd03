//! # wayfinder
//!
//! The command-line entry point. Subcommands arrive with the issues that build them: `serve`
//! (the OpenAI-compatible server), `bench` and `make-model`; today the binary carries the
//! engine core and reports its version.

use clap::Parser;

/// wayfinder: an OpenAI-compatible LLM inference server with request journey tracing.
#[derive(Debug, Parser)]
#[command(name = "wayfinder", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "wayfinder {}: the engine core is built; `serve`, `bench` and `make-model` are not yet \
         available in this build. See README.md.",
        env!("CARGO_PKG_VERSION")
    );
}
