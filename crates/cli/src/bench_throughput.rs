//! `wayfinder bench throughput`: the engine alone, no HTTP.
//!
//! - **prefill**: one request with a `--prompt-len`-token prompt and one output token, timed
//!   from submission to its end; the median of `--repeats` runs. The step budget covers the
//!   whole prompt, so it is one forward pass.
//! - **decode**: `c` requests submitted together (32-token prompts, `--decode-tokens` outputs,
//!   greedy, eos ignored); tokens/s is every output token after each request's first, over the
//!   time from the first first-token to the last last-token — the aggregate rate of `c`
//!   sequences decoding in one batch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use serde_json::json;
use wayfinder_core::{
    EngineConfig, EngineHandle, EngineRequest, FinishedOutput, RequestOutput, RequestStream,
    SamplingParams, SchedulerConfig, StopConditions,
};
use wayfinder_model::{KvCacheSize, LoadOptions, ModelExecutor};

use crate::model_arg;

/// Options of `bench throughput`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A model folder, a GGUF file, `demo`, or a shape name (smollm2-135m, qwen2.5-0.5b).
    #[arg(long, default_value = "smollm2-135m")]
    model: String,
    /// Weight dtype: auto (a GGUF file's weights as stored), f32, bf16 or f16.
    #[arg(long, default_value = "auto")]
    dtype: String,
    /// Prompt length of the prefill run.
    #[arg(long, default_value_t = 512)]
    prompt_len: usize,
    /// Output tokens per request in the decode runs.
    #[arg(long, default_value_t = 64)]
    decode_tokens: u32,
    /// Concurrent requests of the decode runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Prefill repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

const DECODE_PROMPT: usize = 32;
const BLOCK_SIZE: usize = 16;

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let dtype = model_arg::parse_dtype(&args.dtype)?;
    let dir = model_arg::resolve(&args.model, dtype)?;
    let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
    let max_model_len = args
        .prompt_len
        .max(DECODE_PROMPT + args.decode_tokens as usize)
        + 1;
    let model = model_arg::load(
        &dir,
        &LoadOptions {
            dtype,
            max_model_len: Some(max_model_len),
        },
    )?;
    let per_request = max_model_len.div_ceil(BLOCK_SIZE);
    let num_blocks =
        KvCacheSize::Blocks(per_request * max_conc.max(1)).num_blocks(&model.config, BLOCK_SIZE);
    let params = model.decoder.weight_bytes();
    let (arch, weight_type) = (model.config.architecture, model.weight_type);
    let executor = ModelExecutor::try_new(model.decoder, num_blocks, BLOCK_SIZE)?;
    let engine = EngineHandle::spawn(
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: max_conc.max(1),
                max_num_batched_tokens: args.prompt_len.max(DECODE_PROMPT * max_conc).max(2048),
                max_model_len,
                block_size: BLOCK_SIZE,
                num_blocks,
                // It measures computing, as llama-bench does: nothing is reused.
                enable_prefix_caching: false,
                ..SchedulerConfig::default()
            },
            eos_token_ids: model.text.eos_token_ids,
            seed: Some(0),
        },
        Box::new(executor),
        None,
    )?;
    println!(
        "model {} ({arch:?}, {:.1} MB of weights, {}), {} threads",
        args.model,
        params as f64 / 1e6,
        weight_type,
        std::thread::available_parallelism().map_or(1, usize::from)
    );

    // Warm-up: page the weights in and size the buffers.
    finish(engine.add_request(request("warmup", 0, 64, 4))?)?;

    let mut times = Vec::new();
    for r in 0..args.repeats.max(1) {
        let start = Instant::now();
        finish(engine.add_request(request(&format!("prefill{r}"), r, args.prompt_len, 1))?)?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let prefill = args.prompt_len as f64 / times[times.len() / 2];
    println!(
        "prefill  {:>4}-token prompt   {prefill:>9.1} tok/s",
        args.prompt_len
    );

    let mut decode = Vec::new();
    for &c in &args.concurrency {
        let streams = (0..c)
            .map(|i| {
                engine.add_request(request(
                    &format!("d{c}-{i}"),
                    i,
                    DECODE_PROMPT,
                    args.decode_tokens,
                ))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outs = streams
            .into_iter()
            .map(finish)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first = outs
            .iter()
            .filter_map(|o| o.timestamps.first_token)
            .fold(f64::INFINITY, f64::min);
        let last = outs
            .iter()
            .filter_map(|o| o.timestamps.last_token)
            .fold(0.0, f64::max);
        let tokens: usize = outs
            .iter()
            .map(|o| o.usage.completion_tokens.saturating_sub(1))
            .sum();
        let rate = tokens as f64 / (last - first);
        println!("decode   {c:>4} concurrent      {rate:>9.1} tok/s");
        decode.push(json!({ "concurrency": c, "tokens_per_s": rate }));
    }
    engine.shutdown();
    if let Some(path) = &args.json {
        let out = json!({
            "model": args.model, "dtype": weight_type,
            "prefill": { "prompt_len": args.prompt_len, "tokens_per_s": prefill },
            "decode": decode,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A greedy request with a distinct prompt of `len` tokens and `n` outputs, eos ignored.
fn request(id: &str, seed: usize, len: usize, n: u32) -> EngineRequest {
    let prompt = (0..len)
        .map(|i| ((seed * 7919 + i * 31) % 1000 + 3) as u32)
        .collect();
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams::greedy())
        .stop(StopConditions {
            max_tokens: n,
            stop_token_ids: Vec::new(),
            ignore_eos: true,
        })
        .build()
        .expect("benchmark requests are valid")
}

fn finish(mut stream: RequestStream) -> anyhow::Result<FinishedOutput> {
    while let Some(out) = stream.blocking_next() {
        if let RequestOutput::Finished(f) = out {
            anyhow::ensure!(f.error.is_none(), "request failed: {:?}", f.error);
            return Ok(f);
        }
    }
    anyhow::bail!("the engine stopped before the request finished")
}
