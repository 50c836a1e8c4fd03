//! What journey tracing is told: the contract's flags, and how they resolve against the
//! `OTEL_*` environment into one export target (protocol, endpoint, service name).

use std::time::Duration;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl Protocol {
    /// Parses `grpc` or `http/protobuf` (the values of `OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            other => Err(ConfigError(format!(
                "unsupported OTLP traces protocol {other:?}: use `grpc` or `http/protobuf`"
            ))),
        }
    }

    /// The spelling the `OTEL_*` variables use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        }
    }

    /// The OTLP default endpoint for traces.
    pub fn default_endpoint(self) -> &'static str {
        match self {
            Self::Grpc => "http://localhost:4317",
            Self::HttpProtobuf => "http://localhost:4318/v1/traces",
        }
    }
}

/// Which part of wayfinder a process runs (`wayfinder.process.role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProcessRole {
    /// The API server only (the engine core runs elsewhere).
    Api,
    /// The engine core only.
    Engine,
    /// Both, in one process.
    #[default]
    All,
}

impl ProcessRole {
    /// `api`, `engine` or `all`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Engine => "engine",
            Self::All => "all",
        }
    }
}

/// Step tracing (`--step-tracing-*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepTracingConfig {
    /// `--step-tracing-enabled`.
    pub enabled: bool,
    /// `--step-tracing-sample-rate`: the share of steps that get a `scheduler_step` span.
    pub sample_rate: f64,
    /// `--step-tracing-rich-subsample-rate`: the share of sampled steps that also get one
    /// `step.REQUEST_SNAPSHOT` event per request.
    pub rich_subsample_rate: f64,
}

impl Default for StepTracingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            sample_rate: 0.01,
            rich_subsample_rate: 0.001,
        }
    }
}

/// Journey tracing's settings, as the flags give them (unset flags fall back to `OTEL_*`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `--otlp-traces-endpoint`.
    pub endpoint: Option<String>,
    /// `--otlp-traces-protocol`.
    pub protocol: Option<String>,
    /// `--otlp-service-name`.
    pub service_name: Option<String>,
    /// This process's role.
    pub role: ProcessRole,
    /// `--journey-tracing-sample-rate`, in [0, 1].
    pub sample_rate: f64,
    /// Step tracing.
    pub step: StepTracingConfig,
    /// Spans the batch processor may hold; more are dropped (and counted).
    pub max_queue_size: usize,
    /// How long one export may take.
    pub export_timeout: Duration,
    /// How often queued spans are exported (the batch processor's scheduled delay).
    pub export_interval: Duration,
    /// How long shutdown may spend flushing.
    pub shutdown_timeout: Duration,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            protocol: None,
            service_name: None,
            role: ProcessRole::All,
            sample_rate: 1.0,
            step: StepTracingConfig::default(),
            max_queue_size: 4096,
            export_timeout: Duration::from_secs(5),
            export_interval: Duration::from_millis(500),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Where and how spans go, once flags and environment are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// The transport.
    pub protocol: Protocol,
    /// The full endpoint (for HTTP, including `/v1/traces`).
    pub endpoint: String,
    /// `service.name`.
    pub service_name: String,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl TracingConfig {
    /// Checks the rates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let rates = [
            ("--journey-tracing-sample-rate", self.sample_rate),
            ("--step-tracing-sample-rate", self.step.sample_rate),
            (
                "--step-tracing-rich-subsample-rate",
                self.step.rich_subsample_rate,
            ),
        ];
        for (flag, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(ConfigError(format!("{flag} must be in [0, 1], got {rate}")));
            }
        }
        if self.max_queue_size == 0 {
            return Err(ConfigError(
                "the span queue must hold at least one span".into(),
            ));
        }
        Ok(())
    }

    /// Resolves the export target from the flags, then `env` (the `OTEL_*` variables), then
    /// the OTLP defaults. Pass `|k| std::env::var(k).ok()` for the process environment.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ExportTarget, ConfigError> {
        self.validate()?;
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let protocol = match self
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            Some(p) => Protocol::parse(&p)?,
            None => Protocol::Grpc,
        };
        let endpoint = if let Some(e) = self.endpoint.clone() {
            signal_endpoint(protocol, &e)
        } else if let Some(e) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            e
        } else if let Some(e) = env("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // The generic endpoint is a base URL: HTTP appends the signal's path.
            match protocol {
                Protocol::Grpc => e,
                Protocol::HttpProtobuf => format!("{}/v1/traces", e.trim_end_matches('/')),
            }
        } else {
            protocol.default_endpoint().to_owned()
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError(format!(
                "the OTLP traces endpoint {endpoint:?} must start with http:// or https://"
            )));
        }
        let service_name = self
            .service_name
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "wayfinder".to_owned());
        Ok(ExportTarget {
            protocol,
            endpoint,
            service_name,
        })
    }
}

/// `--otlp-traces-endpoint` names the traces endpoint; for HTTP, a bare `host:port` URL (no
/// path) gets the OTLP path `/v1/traces`, which is what a user pointing at a collector means.
fn signal_endpoint(protocol: Protocol, endpoint: &str) -> String {
    let endpoint = endpoint.trim();
    if protocol == Protocol::HttpProtobuf {
        let after_scheme = endpoint
            .split_once("://")
            .map_or(endpoint, |(_, rest)| rest);
        if !after_scheme.trim_end_matches('/').contains('/') {
            return format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        }
    }
    endpoint.to_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn resolve(config: &TracingConfig, vars: &[(&str, &str)]) -> Result<ExportTarget, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        config.resolve(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_to_grpc_on_localhost() {
        let t = resolve(&TracingConfig::default(), &[]).expect("resolves");
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.endpoint, "http://localhost:4317");
        assert_eq!(t.service_name, "wayfinder");
    }

    #[test]
    fn flags_beat_signal_variables_beat_generic_variables() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ];
        let t = resolve(&TracingConfig::default(), &vars).expect("resolves");
        assert_eq!(t.protocol, Protocol::HttpProtobuf);
        assert_eq!(t.endpoint, "http://generic:4318/v1/traces");
        assert_eq!(t.service_name, "from-env");

        let mut vars = vars.to_vec();
        vars.push((
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://signal:9999/custom",
        ));
        let t = resolve(&TracingConfig::default(), &vars).expect("resolves");
        assert_eq!(t.endpoint, "http://signal:9999/custom");

        let flags = TracingConfig {
            protocol: Some("grpc".into()),
            endpoint: Some("http://flag:4317".into()),
            service_name: Some("from-flag".into()),
            ..TracingConfig::default()
        };
        let t = resolve(&flags, &vars).expect("resolves");
        assert_eq!(t.protocol, Protocol::Grpc);
        assert_eq!(t.endpoint, "http://flag:4317");
        assert_eq!(t.service_name, "from-flag");
    }

    #[test]
    fn an_http_endpoint_flag_without_a_path_gets_the_traces_path() {
        let config = TracingConfig {
            protocol: Some("http/protobuf".into()),
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..TracingConfig::default()
        };
        let t = resolve(&config, &[]).expect("resolves");
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/v1/traces");
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:4318/otlp/v1/traces".into()),
            ..config
        };
        let t = resolve(&config, &[]).expect("resolves");
        assert_eq!(t.endpoint, "http://127.0.0.1:4318/otlp/v1/traces");
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag_named() {
        let bad_protocol = TracingConfig {
            protocol: Some("http/json".into()),
            ..TracingConfig::default()
        };
        assert!(resolve(&bad_protocol, &[]).is_err());
        let bad_rate = TracingConfig {
            sample_rate: 1.5,
            ..TracingConfig::default()
        };
        let e = resolve(&bad_rate, &[]).expect_err("refused");
        assert!(e.0.contains("--journey-tracing-sample-rate"), "{e}");
        let bad_endpoint = TracingConfig {
            endpoint: Some("localhost:4317".into()),
            ..TracingConfig::default()
        };
        assert!(resolve(&bad_endpoint, &[]).is_err());
    }
}
