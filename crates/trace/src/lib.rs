//! # wayfinder-trace
//!
//! Request journey tracing, exactly as `shared/JOURNEY_CONTRACT.md` specifies it: one
//! OpenTelemetry tracer provider per process, the scopes `wayfinder.api`,
//! `wayfinder.scheduler` and `wayfinder.scheduler.step`, the `llm_request` span of the API
//! layer, the `llm_core` span of the engine core (its child, through the W3C carrier in the
//! engine request), optional `scheduler_step` spans, and OTLP export over gRPC or HTTP.
//!
//! # Layout
//! - [`names`]: every span, scope, event and attribute name of the contract.
//! - [`config`]: the flags, resolved against the `OTEL_*` environment.
//! - [`init`] / [`Telemetry`] (`provider.rs`): the process singleton, its resource, the
//!   bounded batch processor, the flush on shutdown.
//! - `export.rs`: span counting around the processor and exporter; drops are logged.
//! - `exporter.rs`: the OTLP exporters of `opentelemetry-otlp` (gRPC via tonic, HTTP/protobuf
//!   via blocking reqwest), TLS (rustls with the system's roots and
//!   `OTEL_EXPORTER_OTLP_CERTIFICATE`), gzip, headers and timeout from the `OTEL_*` variables.
//! - [`carrier`]: W3C inject/extract, from HTTP headers and into/out of engine carriers.
//! - [`RequestSpan`] (`api.rs`): `llm_request` and the sampling decision.
//! - [`CoreObserver`] (`observer.rs`): `llm_core` and `scheduler_step` from the engine's
//!   journey events.
//! - [`ExporterError`] (`exporter.rs`): why an exporter could not be built (its certificate,
//!   TLS, HTTP client, runtime or configuration), inside [`TraceError::Exporter`].
//!
//! The OTLP receiver that tests and the tracing benchmark export to is not here: it is the
//! test-support crate `wayfinder-testkit`.
//!
//! # Path of one traced request
//! ```text
//! HTTP headers ─extract─▶ llm_request (SERVER, wayfinder.api) ─inject─▶ engine request carrier
//!   ─▶ engine thread/process: CoreObserver at QUEUED ─extract─▶ llm_core (INTERNAL, child)
//!   ─▶ both spans ─▶ counting batch processor ─▶ OTLP exporter ─▶ collector
//! ```

mod api;
pub mod carrier;
pub mod config;
mod export;
mod exporter;
pub mod names;
mod observer;
mod provider;

pub use api::{Latency, RequestParams, RequestSpan, Usage};
pub use config::{
    ConfigError, ExportTarget, ProcessRole, Protocol, StepTracingConfig, TracingConfig,
};
pub use export::ExportStats;
pub use exporter::ExporterError;
pub use observer::CoreObserver;
pub use opentelemetry::trace::TraceId;
pub use provider::{ShutdownGuard, Telemetry, TraceError, init, process_telemetry};

#[cfg(feature = "testing")]
pub use opentelemetry_sdk::trace::{InMemorySpanExporter, InMemorySpanExporterBuilder, SpanData};
