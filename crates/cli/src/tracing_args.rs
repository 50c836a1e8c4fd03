//! The journey-tracing flags of `serve` (names from the journey contract) and the provider
//! they make.

use anyhow::Context;
use wayfinder_trace::{ProcessRole, StepTracingConfig, Telemetry, TracingConfig};

/// Journey tracing's flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TracingArgs {
    /// Record each request's journey as OpenTelemetry spans (`llm_request`, `llm_core`) and
    /// export them over OTLP. Off: no span is made and no per-request tracing state exists.
    #[arg(long)]
    enable_journey_tracing: bool,
    /// Share of requests traced, in [0, 1]; a request with a `traceparent` follows its
    /// parent's sampled flag.
    #[arg(long, default_value_t = 1.0)]
    journey_tracing_sample_rate: f64,
    /// OTLP traces endpoint [default: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else
    /// OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4317 (gRPC) or
    /// http://localhost:4318/v1/traces (HTTP)].
    #[arg(long)]
    otlp_traces_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` [default: OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, else
    /// OTEL_EXPORTER_OTLP_PROTOCOL, else grpc].
    #[arg(long)]
    otlp_traces_protocol: Option<String>,
    /// `service.name` of the spans [default: OTEL_SERVICE_NAME, else wayfinder].
    #[arg(long)]
    otlp_service_name: Option<String>,
    /// Also trace sampled scheduler steps as `scheduler_step` spans linked to their requests.
    #[arg(long)]
    step_tracing_enabled: bool,
    /// Share of steps traced when step tracing is on.
    #[arg(long, default_value_t = 0.01)]
    step_tracing_sample_rate: f64,
    /// Share of traced steps that also record one snapshot event per request.
    #[arg(long, default_value_t = 0.001)]
    step_tracing_rich_subsample_rate: f64,
}

impl TracingArgs {
    /// The settings these flags give, for a process in `role`.
    pub(crate) fn config(&self, role: ProcessRole) -> TracingConfig {
        TracingConfig {
            endpoint: self.otlp_traces_endpoint.clone(),
            protocol: self.otlp_traces_protocol.clone(),
            service_name: self.otlp_service_name.clone(),
            role,
            sample_rate: self.journey_tracing_sample_rate,
            step: StepTracingConfig {
                enabled: self.step_tracing_enabled,
                sample_rate: self.step_tracing_sample_rate,
                rich_subsample_rate: self.step_tracing_rich_subsample_rate,
            },
            ..TracingConfig::default()
        }
    }

    /// These flags as arguments, to hand to an `engine-core` child (which makes its own
    /// provider from them).
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = Vec::new();
        if self.enable_journey_tracing {
            args.push("--enable-journey-tracing".into());
        }
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}").into());
            args.push(value.into());
        };
        flag(
            "journey-tracing-sample-rate",
            self.journey_tracing_sample_rate.to_string(),
        );
        if let Some(e) = &self.otlp_traces_endpoint {
            flag("otlp-traces-endpoint", e.clone());
        }
        if let Some(p) = &self.otlp_traces_protocol {
            flag("otlp-traces-protocol", p.clone());
        }
        if let Some(n) = &self.otlp_service_name {
            flag("otlp-service-name", n.clone());
        }
        flag(
            "step-tracing-sample-rate",
            self.step_tracing_sample_rate.to_string(),
        );
        flag(
            "step-tracing-rich-subsample-rate",
            self.step_tracing_rich_subsample_rate.to_string(),
        );
        if self.step_tracing_enabled {
            args.push("--step-tracing-enabled".into());
        }
        args
    }

    /// This process's provider when tracing is on; the flags are checked either way.
    pub(crate) fn init(&self, role: ProcessRole) -> anyhow::Result<Option<Telemetry>> {
        let config = self.config(role);
        config.validate().context("journey tracing")?;
        if !self.enable_journey_tracing {
            return Ok(None);
        }
        let telemetry = wayfinder_trace::init(&config).context("journey tracing")?;
        Ok(Some(telemetry))
    }
}
