//! `wayfinder engine-core --listen ADDR [MODEL]`: the engine core alone, in its own process,
//! serving API servers over the engine protocol (`wayfinder-ipc`). It makes its own tracer
//! provider (`wayfinder.process.role = engine`) and exports `llm_core` itself, from the
//! carriers the API servers send.

use anyhow::Context;
use std::path::PathBuf;

use wayfinder_ipc::{Access, EngineAddr, EngineInfo, Secret, ServerTls};
use wayfinder_trace::{CoreObserver, ProcessRole};

use crate::engine_args::EngineArgs;
use crate::tracing_args::TracingArgs;

/// Options of `engine-core`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Where to listen: `unix:/path/to.sock` or `HOST:PORT`.
    #[arg(long)]
    listen: String,
    /// The shared secret every API server must present (required; `serve --engine-process`
    /// makes one for its own child). Prefer the environment variable: arguments are visible
    /// to every user of the host.
    #[arg(long, env = "WAYFINDER_ENGINE_TOKEN", hide_env_values = true)]
    engine_token: Option<String>,
    /// The most live requests one API server connection may have.
    #[arg(long, default_value_t = wayfinder_ipc::Access::DEFAULT_MAX_REQUESTS)]
    max_requests_per_connection: usize,
    /// TLS on a TCP address: this engine's certificate chain (PEM); needs `--tls-key`.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the private key of `--tls-cert` (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Mutual TLS: API servers must present a certificate signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// The engine.
    #[command(flatten)]
    engine: EngineArgs,
    /// Journey tracing (docs/JOURNEY_TRACING.md).
    #[command(flatten)]
    tracing: TracingArgs,
    /// Exit when stdin closes; `serve --engine-process` sets it so that its child never
    /// outlives it.
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
}

pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let addr = EngineAddr::parse(&args.listen).map_err(anyhow::Error::msg)?;
    let token = args
        .engine_token
        .as_deref()
        .context("engine-core needs a token: --engine-token or WAYFINDER_ENGINE_TOKEN")?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            ServerTls::from_pem(cert, key, args.tls_client_ca.as_deref())
                .context("--tls-cert / --tls-key / --tls-client-ca")?,
        ),
        _ => None,
    };
    let access = Access {
        token: Secret::new(token).context("--engine-token")?,
        max_requests: args.max_requests_per_connection.max(1),
        tls,
    };
    let telemetry = args.tracing.init(ProcessRole::Engine)?;
    let _flush = telemetry
        .as_ref()
        .map(wayfinder_trace::Telemetry::shutdown_guard);
    let observer = telemetry
        .as_ref()
        .map(|t| Box::new(CoreObserver::new(t)) as Box<dyn wayfinder_core::JourneyObserver>);
    let engine = args.engine.start(observer)?;
    let info = EngineInfo {
        pid: std::process::id(),
        max_model_len: engine.max_model_len,
        num_blocks: engine.num_blocks,
        block_size: args.engine.block_size,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("wayfinder-ipc")
        .build()
        .context("starting the async runtime")?;
    let handle = engine.handle.clone();
    let result = runtime.block_on(async {
        let listener = addr
            .listen()
            .await
            .with_context(|| format!("listening on {addr}"))?;
        tracing::info!(
            address = %listener.local_addr().map_or_else(|_| addr.to_string(), |a| a.to_string()),
            model = %engine.model.folder.display(),
            dtype = engine.dtype,
            kv_blocks = engine.num_blocks,
            max_model_len = engine.max_model_len,
            journey_tracing = telemetry.is_some(),
            "engine core listening"
        );
        let parent_gone = async {
            if args.exit_on_stdin_eof {
                wayfinder_ipc::stdin_closed().await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            served = wayfinder_ipc::serve(listener, handle, info, access) => served.context("serving"),
            () = crate::serve::shutdown_signal() => Ok(()),
            () = parent_gone => {
                tracing::info!("the API server is gone (stdin closed); stopping");
                Ok(())
            }
        }
    });
    runtime.shutdown_background();
    if let EngineAddr::Unix(path) = &addr {
        let _ = std::fs::remove_file(path);
    }
    engine.handle.shutdown();
    tracing::info!("engine core stopped");
    result
}
