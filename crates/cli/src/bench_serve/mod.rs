//! `wayfinder bench serve`: a load generator for any OpenAI-compatible server, in the manner
//! of `vllm bench serve`.
//!
//! `--num-prompts` streaming requests of random prompts (`--input-len` words, `--output-len`
//! tokens with `ignore_eos`) are due at Poisson arrival times of `--request-rate` (or all at
//! once with `inf`), with at most `--max-concurrency` in flight; each one's TTFT, ITL, TPOT and
//! end-to-end latency is measured from its stream, and the run ends with the summary (and
//! `--result-json`). Plain HTTP only.
//!
//! # Layout
//! - `workload`: prompts, request bodies, arrival times, `traceparent`s.
//! - `client`: one streaming request, its SSE stream read into a measurement or a failure.
//! - `stats`: percentiles, distributions and throughputs — pure arithmetic.
//! - `report`: the text summary and the result JSON.

mod client;
mod report;
mod stats;
mod workload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use client::{Client, RequestResult};
use stats::Summary;
use workload::Workload;

/// The API a run calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Endpoint {
    /// `POST /v1/chat/completions`, one user message.
    Chat,
    /// `POST /v1/completions`, a text prompt.
    Completions,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Self::Chat => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
        }
    }
}

/// Options of `bench serve`; names follow `vllm bench serve`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Args {
    /// The server's root URL (http only; a trailing `/v1` is allowed).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// The API to call.
    #[arg(long, value_enum, default_value = "completions")]
    endpoint: Endpoint,
    /// The model name to send; defaults to the first that `GET /v1/models` lists.
    #[arg(long)]
    model: Option<String>,
    /// Requests to send.
    #[arg(long, default_value_t = 100)]
    num_prompts: usize,
    /// Requests per second, as a Poisson process; `inf` sends them all at once.
    #[arg(long, default_value = "inf", value_parser = parse_rate)]
    request_rate: f64,
    /// Most requests in flight at once (unlimited when not given).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    max_concurrency: Option<u64>,
    /// Prompt length, in random common words (about one token each).
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    /// Words of one shared prefix (a system prompt; the system message on the chat endpoint)
    /// put before the prompts of --shared-prefix-ratio of the requests, to measure a prefix
    /// cache.
    #[arg(long, default_value_t = 0)]
    shared_prefix_len: usize,
    /// The share of requests, from 0 to 1, whose prompt starts with the shared prefix.
    #[arg(long, default_value_t = 1.0, value_parser = parse_ratio)]
    shared_prefix_ratio: f64,
    /// Output tokens per request (`max_tokens`, with `ignore_eos` for servers that accept it).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    output_len: u64,
    /// Seed of the prompts and arrival times.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Send a fresh W3C `traceparent` with every request (its trace id is in --result-json).
    #[arg(long)]
    traceparent: bool,
    /// A JSON object merged into every request body, e.g. '{"min_tokens": 64}'.
    #[arg(long, value_parser = parse_extra_body)]
    extra_body: Option<Map<String, Value>>,
    /// Bearer token for servers started with an API key.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds a request may take, streaming included, before it counts as failed.
    #[arg(long, default_value_t = 3600.0)]
    request_timeout: f64,
    /// Write the settings, the summary and every request (with its trace id) as JSON here.
    #[arg(long)]
    result_json: Option<PathBuf>,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    if s.eq_ignore_ascii_case("inf") {
        return Ok(f64::INFINITY);
    }
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 => Ok(r),
        _ => Err(format!(
            "{s:?} is not a positive number of requests per second or `inf`"
        )),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share from 0 to 1")),
    }
}

fn parse_extra_body(s: &str) -> Result<Map<String, Value>, String> {
    match serde_json::from_str(s) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("--extra-body must be a JSON object".to_owned()),
        Err(e) => Err(format!("--extra-body is not JSON: {e}")),
    }
}

/// What a run produced.
#[derive(Debug)]
struct Run {
    workload: Workload,
    base_url: String,
    results: Vec<RequestResult>,
    summary: Summary,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    // One thread: the client's work is small, and on a small machine the cores are the
    // server's.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let progress = ProgressBar::new(args.num_prompts as u64).with_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]")
            .context("the progress template")?,
    );
    let run = runtime.block_on(bench(args, &progress))?;
    progress.finish_and_clear();
    let concurrency = max_concurrency(args);
    print!("{}", report::text(&run.summary, &run.workload, concurrency));
    if let Some(path) = &args.result_json {
        let doc = report::json(
            &run.summary,
            &run.workload,
            &run.base_url,
            concurrency,
            &run.results,
        );
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn max_concurrency(args: &Args) -> Option<usize> {
    args.max_concurrency
        .map(|c| usize::try_from(c).unwrap_or(usize::MAX))
}

/// Sends every request of the run and waits for the last one.
async fn bench(args: &Args, progress: &ProgressBar) -> anyhow::Result<Run> {
    let base_url = args.base_url.trim_end_matches('/');
    let base_url = base_url.strip_suffix("/v1").unwrap_or(base_url).to_owned();
    let timeout = Duration::try_from_secs_f64(args.request_timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .context("--request-timeout must be a positive number of seconds")?;
    let client = Client::new(&base_url, args.endpoint, args.api_key.clone(), timeout)?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => client.first_model().await?,
    };
    let workload = Workload {
        endpoint: args.endpoint,
        model,
        num_prompts: args.num_prompts,
        input_len: args.input_len,
        shared_prefix_len: args.shared_prefix_len,
        shared_prefix_ratio: args.shared_prefix_ratio,
        output_len: args.output_len,
        request_rate: args.request_rate,
        seed: args.seed,
        traceparent: args.traceparent,
        extra_body: args.extra_body.clone().unwrap_or_default(),
    };
    let requests = workload.requests();
    let limit =
        max_concurrency(args).map(|c| Arc::new(Semaphore::new(c.min(Semaphore::MAX_PERMITS))));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(requests.len());
    for request in requests {
        let due = Duration::try_from_secs_f64(request.arrival)
            .ok()
            .and_then(|d| start.checked_add(d))
            .context("an arrival time beyond the clock's range: --request-rate is too low")?;
        tokio::time::sleep_until(due.into()).await;
        let (client, limit, progress) = (client.clone(), limit.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = match limit {
                Some(s) => Some(s.acquire_owned().await.context("the concurrency limit")?),
                None => None,
            };
            let result = client.send(&request, start).await;
            progress.inc(1);
            anyhow::Ok(result)
        }));
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a request task")??);
    }
    let summary = Summary::new(&results, start.elapsed().as_secs_f64());
    Ok(Run {
        workload,
        base_url,
        results,
        summary,
    })
}
