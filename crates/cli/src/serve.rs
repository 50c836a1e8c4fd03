//! `wayfinder serve [MODEL]`: load a model, start the engine with the real [`ModelExecutor`] —
//! in this process, in an `engine-core` child (`--engine-process`), or reached at an address
//! (`--engine-address`) — and serve the OpenAI API until SIGINT or SIGTERM.
//!
//! [`ModelExecutor`]: wayfinder_model::ModelExecutor

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use wayfinder_core::{EngineHandle, SamplingParams};
use wayfinder_ipc::{ClientTls, EngineAddr, RemoteConfig, Secret, SecretText, SpawnSpec};
use wayfinder_server::{AppState, Limits, ServerParts};
use wayfinder_text::{GenerationDefaults, ModelText};
use wayfinder_trace::{CoreObserver, ProcessRole, Telemetry};

use crate::engine_args::EngineArgs;

/// Options of `serve`; names follow vLLM's where vLLM has them.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The engine: model, dtype, KV cache, batching.
    #[command(flatten)]
    engine: EngineArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on.
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The name clients send as `model`; defaults to MODEL as given.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Require `Authorization: Bearer <key>` on /v1/*.
    #[arg(long, env = "WAYFINDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Requests allowed to wait beyond --max-num-seqs; more get 429.
    #[arg(long, default_value_t = 256)]
    max_waiting_requests: usize,
    /// Seconds requests in flight may take to finish after SIGINT/SIGTERM before being aborted.
    #[arg(long, default_value_t = 30.0, value_parser = crate::units::seconds)]
    shutdown_timeout: f64,
    /// Seconds one generation request may take from arrival to its last token; a request
    /// past it is aborted with 504 (`timeout_error`). Unset: no limit.
    #[arg(long, value_parser = crate::units::positive_seconds)]
    request_timeout: Option<f64>,
    /// Seconds a connection may take to send a request's headers, idle keep-alive time
    /// included, before it is closed.
    #[arg(long, default_value_t = 60.0, value_parser = crate::units::positive_seconds)]
    http_idle_timeout: f64,
    /// Journeys kept in memory for `GET /journeys` (the last N requests); 0 keeps none.
    #[arg(long, default_value_t = 1000)]
    journey_history: usize,
    /// Where `/journeys` links a trace id, with `{trace_id}` in it (e.g.
    /// `http://localhost:16686/trace/{trace_id}` for Jaeger).
    #[arg(long)]
    trace_url_template: Option<String>,
    /// HTTP connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Run the engine core in a child process (`wayfinder engine-core`) reached over a local
    /// socket; it is restarted with backoff if it dies.
    #[arg(long, conflicts_with = "engine_address")]
    engine_process: bool,
    /// Use the engine core listening at this address (`HOST:PORT` or `unix:PATH`, started
    /// with `wayfinder engine-core --listen`); MODEL must name the same model, for its
    /// tokenizer and chat template.
    #[arg(long)]
    engine_address: Option<String>,
    /// The token of the engine core at `--engine-address` (its `--engine-token`). Prefer the
    /// environment variable: arguments are visible to every user of the host.
    #[arg(long, env = "WAYFINDER_ENGINE_TOKEN", hide_env_values = true)]
    engine_token: Option<String>,
    /// TLS to `--engine-address`: the CA (PEM) that signed the engine core's certificate.
    #[arg(long, requires = "engine_address")]
    engine_tls_ca: Option<std::path::PathBuf>,
    /// Mutual TLS: this server's certificate (PEM) for the engine core; needs
    /// `--engine-tls-key` and `--engine-tls-ca`.
    #[arg(long, requires_all = ["engine_tls_key", "engine_tls_ca"])]
    engine_tls_cert: Option<std::path::PathBuf>,
    /// Mutual TLS: the private key of `--engine-tls-cert` (PEM).
    #[arg(long, requires = "engine_tls_cert")]
    engine_tls_key: Option<std::path::PathBuf>,
    /// Journey tracing (docs/JOURNEY_TRACING.md).
    #[command(flatten)]
    tracing: crate::tracing_args::TracingArgs,
}

/// The engine this server uses, however it runs.
struct Engine {
    handle: EngineHandle,
    model: ModelText,
    max_model_len: usize,
    /// How it runs, for the log.
    mode: String,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    // An empty or blank key must not quietly turn auth off: refuse to start instead. (clap
    // takes an empty WAYFINDER_API_KEY for an absent one, so that case is looked at here.)
    let env_key_blank = std::env::var_os("WAYFINDER_API_KEY")
        .is_some_and(|v| v.to_string_lossy().trim().is_empty());
    if args.api_key.is_none() && env_key_blank {
        anyhow::bail!("--api-key (or WAYFINDER_API_KEY): must not be empty or only whitespace");
    }
    let api_key = args
        .api_key
        .as_deref()
        .map(Secret::new)
        .transpose()
        .context("--api-key (or WAYFINDER_API_KEY)")?;
    let remote = args.engine_process || args.engine_address.is_some();
    let role = if remote {
        ProcessRole::Api
    } else {
        ProcessRole::All
    };
    let telemetry = args.tracing.init(role)?;
    // Flushes the spans on every way out, errors included.
    let _flush = telemetry.as_ref().map(Telemetry::shutdown_guard);
    let engine = if remote {
        remote_engine(args)?
    } else {
        local_engine(args, telemetry.as_ref())?
    };
    let name = args
        .served_model_name
        .clone()
        .unwrap_or_else(|| args.engine.model.clone());
    let state = AppState::new(ServerParts {
        engine: engine.handle.clone(),
        tokenizer: Arc::new(engine.model.tokenizer),
        chat_template: Arc::new(engine.model.chat_template),
        model_name: name.clone(),
        max_model_len: engine.max_model_len,
        eos_token_ids: engine.model.eos_token_ids,
        limits: Limits {
            max_num_seqs: args.engine.max_num_seqs,
            max_waiting_requests: args.max_waiting_requests,
            shutdown_timeout: Duration::from_secs_f64(args.shutdown_timeout),
            request_timeout: args.request_timeout.map(Duration::from_secs_f64),
            http_idle_timeout: Duration::from_secs_f64(args.http_idle_timeout),
            max_connections: args.max_connections as usize,
            ..Limits::default()
        },
        api_key,
        sampling_defaults: sampling_defaults(&engine.model.generation),
        tracing: telemetry.clone(),
        journey_history: args.journey_history,
        trace_url_template: args.trace_url_template.clone(),
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
            folder = %engine.model.folder.display(),
            engine = %engine.mode,
            max_model_len = engine.max_model_len,
            auth = args.api_key.is_some(),
            journey_tracing = telemetry.is_some(),
            "serving the OpenAI API"
        );
        wayfinder_server::run(listener, state, shutdown_signal())
            .await
            .context("serving")
    });
    engine.handle.shutdown();
    tracing::info!("stopped");
    served
}

fn local_engine(args: &Args, telemetry: Option<&Telemetry>) -> anyhow::Result<Engine> {
    let observer = telemetry
        .map(|t| Box::new(CoreObserver::new(t)) as Box<dyn wayfinder_core::JourneyObserver>);
    let local = args.engine.start(observer)?;
    Ok(Engine {
        mode: format!(
            "in process ({}, {} KV blocks, {} MiB)",
            local.dtype,
            local.num_blocks,
            local.kv_bytes >> 20
        ),
        handle: local.handle,
        model: local.model,
        max_model_len: local.max_model_len,
    })
}

fn remote_engine(args: &Args) -> anyhow::Result<Engine> {
    let model = args.engine.load_text()?;
    let (addr, spawn, token) = match &args.engine_address {
        Some(a) => {
            let token = args.engine_token.clone().context(
                "--engine-address needs the engine's token: --engine-token or WAYFINDER_ENGINE_TOKEN",
            )?;
            (
                EngineAddr::parse(a).map_err(anyhow::Error::msg)?,
                None,
                token,
            )
        }
        None => {
            // A fresh token for our own child, handed over in its environment.
            let token = Secret::generate();
            let socket =
                std::env::temp_dir().join(format!("wayfinder-engine-{}.sock", std::process::id()));
            let addr = EngineAddr::Unix(socket);
            let mut child_args: Vec<std::ffi::OsString> = vec![
                "engine-core".into(),
                "--listen".into(),
                addr.to_string().into(),
                "--exit-on-stdin-eof".into(),
            ];
            child_args.extend(args.engine.to_args());
            child_args.extend(args.tracing.to_args());
            let spec = SpawnSpec {
                program: std::env::current_exe().context("finding this program")?,
                args: child_args,
                envs: vec![("WAYFINDER_ENGINE_TOKEN".into(), token.clone().into())],
            };
            (addr, Some(spec), token)
        }
    };
    let tls = match &args.engine_tls_ca {
        Some(ca) => {
            let identity = args
                .engine_tls_cert
                .as_deref()
                .zip(args.engine_tls_key.as_deref());
            Some(ClientTls::from_pem(ca, identity).context("--engine-tls-*")?)
        }
        None => None,
    };
    let config = RemoteConfig {
        tls,
        ..RemoteConfig::new(addr.clone(), spawn, SecretText::new(token))
    };
    let (handle, info, _status) =
        wayfinder_ipc::connect(config).context("starting the engine core")?;
    Ok(Engine {
        handle,
        model,
        max_model_len: info.max_model_len,
        mode: format!(
            "engine core at {addr} (pid {}, {} KV blocks)",
            info.pid, info.num_blocks
        ),
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
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

/// OpenAI's sampling defaults, overridden by the model's `generation_config.json`.
fn sampling_defaults(g: &GenerationDefaults) -> SamplingParams {
    let base = SamplingParams::default();
    SamplingParams {
        temperature: g.temperature.unwrap_or(base.temperature),
        top_p: g.top_p.unwrap_or(base.top_p),
        top_k: g.top_k.unwrap_or(base.top_k),
        repetition_penalty: g.repetition_penalty.unwrap_or(base.repetition_penalty),
        ..base
    }
}
