//! [`Telemetry`]: the process's one tracer provider with its three scopes, made by [`init`]
//! (the process singleton) or, for tests and tools, by [`Telemetry::with_exporter`].
//!
//! The provider exports through the SDK's bounded batch processor (its own thread; a request
//! never waits on it) to `opentelemetry-otlp`'s exporter ([`crate::exporter`]). The gRPC
//! exporter's connection runs on a small Tokio runtime that the provider owns, so export works
//! whatever runtime (or none) the caller has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use opentelemetry::InstrumentationScope;
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanExporter,
};
use wayfinder_core::clock::monotonic_now;

use crate::config::{ExportTarget, TracingConfig};
use crate::export::{Counters, CountingExporter, CountingProcessor, ExportStats};
use crate::exporter::{self, ExportRuntime, ExporterError};
use crate::names::{attr, scope};

/// Spans per export. The SDK's batch processor exports one batch at a time and waits for the
/// collector's answer, so this bounds the span rate a process can export: halving it to 256
/// halved that rate (spans were dropped at 20 000 spans/s against a collector on the same two
/// cores).
const EXPORT_BATCH: usize = 512;

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A flag or `OTEL_*` variable has a value that cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The exporter could not be built.
    #[error("cannot build the OTLP {protocol} exporter for {endpoint}: {reason}")]
    Exporter {
        /// The transport.
        protocol: &'static str,
        /// The endpoint.
        endpoint: String,
        /// What went wrong (in the message, so not repeated as the source).
        reason: ExporterError,
    },
}

/// The process's tracing: one provider, three scoped tracers, the sampling settings, and the
/// export counters. Cheap to clone; every clone shares one provider.
#[derive(Debug, Clone)]
pub struct Telemetry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    provider: SdkTracerProvider,
    api: SdkTracer,
    scheduler: SdkTracer,
    step: SdkTracer,
    config: TracingConfig,
    /// Where spans go; `None` for a caller-supplied exporter.
    target: Option<ExportTarget>,
    counters: Arc<Counters>,
    clock: WallClock,
    shut_down: AtomicBool,
    _runtime: ExportRuntime,
}

/// Maps the engine's monotonic clock to wall-clock time, so that event timestamps keep the
/// order of their `ts.monotonic`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WallClock {
    wall: SystemTime,
    mono: f64,
}

impl WallClock {
    fn now() -> Self {
        Self {
            wall: SystemTime::now(),
            mono: monotonic_now(),
        }
    }

    /// The wall-clock time of monotonic instant `mono`.
    pub(crate) fn wall(&self, mono: f64) -> SystemTime {
        let d = mono - self.mono;
        if d >= 0.0 {
            self.wall + Duration::from_secs_f64(d)
        } else {
            self.wall - Duration::from_secs_f64(-d)
        }
    }
}

/// The process-wide provider; see [`init`].
static PROCESS: OnceLock<Telemetry> = OnceLock::new();
/// Serialises [`init`], so that two racing callers cannot both build a provider.
static INIT: Mutex<()> = Mutex::new(());

/// Makes this process's tracer provider, once: it exports over OTLP as `config` and the
/// `OTEL_*` environment say, and is also installed as OpenTelemetry's global provider so that
/// any other instrumentation shares it. A second call returns the same [`Telemetry`]; one that
/// resolves to a different endpoint or protocol logs a warning and changes nothing.
pub fn init(config: &TracingConfig) -> Result<Telemetry, TraceError> {
    let _serial = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let target = config.resolve(|k| std::env::var(k).ok())?;
    if let Some(existing) = PROCESS.get() {
        if existing.target() != Some(&target) {
            tracing::warn!(
                requested = %target.endpoint,
                requested_protocol = target.protocol.as_str(),
                current = %existing.target().map_or("", |t| t.endpoint.as_str()),
                "journey tracing is already set up in this process; keeping its provider"
            );
        }
        return Ok(existing.clone());
    }
    let telemetry = Telemetry::build_otlp(config.clone(), target, |k| std::env::var(k).ok())?;
    opentelemetry::global::set_tracer_provider(telemetry.inner.provider.clone());
    let _ = PROCESS.set(telemetry.clone());
    Ok(telemetry)
}

/// The provider [`init`] made, if it has run.
pub fn process_telemetry() -> Option<Telemetry> {
    PROCESS.get().cloned()
}

impl Telemetry {
    /// A provider exporting over OTLP as `config` and the `OTEL_*` environment say, that is
    /// *not* this process's provider: for tests and tools that need one of their own. A
    /// server uses [`init`].
    pub fn otlp(config: &TracingConfig) -> Result<Self, TraceError> {
        Self::otlp_with_env(config, |k| std::env::var(k).ok())
    }

    /// [`Telemetry::otlp`] with the `OTEL_*` variables read from `env` instead of the process
    /// environment (for tests: the environment is shared by every thread).
    pub fn otlp_with_env(
        config: &TracingConfig,
        env: impl Fn(&str) -> Option<String> + Sync,
    ) -> Result<Self, TraceError> {
        let target = config.resolve(&env)?;
        Self::build_otlp(config.clone(), target, env)
    }

    fn build_otlp(
        config: TracingConfig,
        target: ExportTarget,
        env: impl Fn(&str) -> Option<String> + Sync,
    ) -> Result<Self, TraceError> {
        let error = |reason: ExporterError| TraceError::Exporter {
            protocol: target.protocol.as_str(),
            endpoint: target.endpoint.clone(),
            reason,
        };
        // Built on a plain thread: the gRPC channel must be made inside the export runtime,
        // and the blocking HTTP client must not be made inside the caller's async runtime.
        let (runtime, exporter) = std::thread::scope(|s| {
            s.spawn(|| exporter::build(&target, config.export_timeout, &env))
                .join()
                .unwrap_or(Err(ExporterError::Panicked))
        })
        .map_err(error)?;
        tracing::info!(
            endpoint = %target.endpoint,
            protocol = target.protocol.as_str(),
            service_name = %target.service_name,
            role = config.role.as_str(),
            sample_rate = config.sample_rate,
            "journey tracing: tracer provider made; exporting spans over OTLP"
        );
        let counters = Arc::new(Counters::default());
        let exporter = CountingExporter::new(exporter, counters.clone(), target.endpoint.clone());
        Ok(Self::build(
            config,
            Some(target),
            exporter,
            counters,
            runtime,
        ))
    }

    /// A provider that exports to `exporter` through the same counting batch processor as the
    /// real one; for tests (the SDK's in-memory exporter) and tools. Not the process singleton.
    pub fn with_exporter(config: TracingConfig, exporter: impl SpanExporter + 'static) -> Self {
        let counters = Arc::new(Counters::default());
        let exporter = CountingExporter::new(exporter, counters.clone(), "in-process".into());
        Self::build(config, None, exporter, counters, ExportRuntime::default())
    }

    fn build(
        config: TracingConfig,
        target: Option<ExportTarget>,
        exporter: impl SpanExporter + 'static,
        counters: Arc<Counters>,
        runtime: ExportRuntime,
    ) -> Self {
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(config.max_queue_size)
            .with_max_export_batch_size(config.max_queue_size.min(EXPORT_BATCH))
            .with_scheduled_delay(config.export_interval)
            .build();
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build();
        let capacity = config.max_queue_size + config.max_queue_size.min(EXPORT_BATCH);
        let processor = CountingProcessor::new(processor, counters.clone(), capacity);
        let service_name = target.as_ref().map_or_else(
            || {
                config
                    .service_name
                    .clone()
                    .unwrap_or_else(|| "wayfinder".into())
            },
            |t| t.service_name.clone(),
        );
        let resource = Resource::builder()
            .with_service_name(service_name)
            .with_attributes([
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
                KeyValue::new("process.pid", i64::from(std::process::id())),
                KeyValue::new(attr::PROCESS_ROLE, config.role.as_str()),
            ])
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = |name: &'static str| {
            let scope = InstrumentationScope::builder(name)
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            tracing::info!(scope = name, "journey tracing: tracer taken");
            provider.tracer_with_scope(scope)
        };
        let (api, scheduler, step) = (
            tracer(scope::API),
            tracer(scope::SCHEDULER),
            tracer(scope::STEP),
        );
        Self {
            inner: Arc::new(Inner {
                provider,
                api,
                scheduler,
                step,
                config,
                target,
                counters,
                clock: WallClock::now(),
                shut_down: AtomicBool::new(false),
                _runtime: runtime,
            }),
        }
    }

    /// The settings.
    pub fn config(&self) -> &TracingConfig {
        &self.inner.config
    }

    /// Where spans go (`None` for a caller-supplied exporter).
    pub fn target(&self) -> Option<&ExportTarget> {
        self.inner.target.as_ref()
    }

    /// Whether two handles share one provider.
    pub fn same_provider(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Span counts so far.
    pub fn stats(&self) -> ExportStats {
        self.inner.counters.snapshot()
    }

    /// Exports what is queued now (blocking, bounded by the export timeout).
    pub fn force_flush(&self) {
        if let Err(e) = self.inner.provider.force_flush() {
            tracing::warn!(error = %e, "journey tracing: flushing spans failed");
        }
    }

    /// Flushes what is queued (within the configured bound) and stops exporting; says in the
    /// log what was exported and what was lost. Later calls do nothing.
    pub fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let result = self
            .inner
            .provider
            .shutdown_with_timeout(self.inner.config.shutdown_timeout);
        let stats = self.stats();
        if let Err(e) = result {
            tracing::warn!(error = %e, "journey tracing: shutdown did not flush cleanly");
        }
        if stats.failed > 0 || stats.unaccounted() > 0 {
            tracing::warn!(
                exported = stats.exported,
                lost_to_export_errors = stats.failed,
                dropped_or_unflushed = stats.unaccounted(),
                "journey tracing: stopped; some spans were not exported"
            );
        } else {
            tracing::info!(
                exported = stats.exported,
                "journey tracing: stopped; every span exported"
            );
        }
    }

    /// A guard that calls [`Telemetry::shutdown`] when dropped, so that every way out of a
    /// process (errors included) flushes its spans.
    pub fn shutdown_guard(&self) -> ShutdownGuard {
        ShutdownGuard(self.clone())
    }

    pub(crate) fn api_tracer(&self) -> &SdkTracer {
        &self.inner.api
    }
    pub(crate) fn scheduler_tracer(&self) -> &SdkTracer {
        &self.inner.scheduler
    }
    pub(crate) fn step_tracer(&self) -> &SdkTracer {
        &self.inner.step
    }
    pub(crate) fn clock(&self) -> WallClock {
        self.inner.clock
    }
}

/// Flushes and shuts the provider down when dropped; see [`Telemetry::shutdown_guard`].
#[derive(Debug)]
#[must_use = "the provider is shut down when the guard is dropped"]
pub struct ShutdownGuard(Telemetry);

impl Drop for ShutdownGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}
