//! The OTLP span exporters: `opentelemetry-otlp`'s, over gRPC (tonic) or HTTP/protobuf
//! (blocking reqwest), with TLS for `https://` endpoints and gzip on request.
//!
//! | setting | where it comes from |
//! |---|---|
//! | endpoint, protocol | the flags, else `OTEL_EXPORTER_OTLP_{TRACES_,}{ENDPOINT,PROTOCOL}` ([`crate::config`]) |
//! | headers | `OTEL_EXPORTER_OTLP_{TRACES_,}HEADERS` (read by `opentelemetry-otlp`) |
//! | compression | `OTEL_EXPORTER_OTLP_{TRACES_,}COMPRESSION` = `gzip` (read by `opentelemetry-otlp`) |
//! | timeout | `OTEL_EXPORTER_OTLP_{TRACES_,}TIMEOUT` in ms, else the configured export timeout |
//! | trust | the system's roots, plus the PEM file `OTEL_EXPORTER_OTLP_{TRACES_,}CERTIFICATE` |
//!
//! TLS is rustls with the aws-lc-rs provider (reqwest's own) for both transports. The gRPC channel lives on a small
//! Tokio runtime that the provider owns (the SDK's batch processor runs exports on its own
//! thread); the blocking HTTP client is built outside any async runtime.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_otlp::{
    Compression, Protocol as OtlpProtocol, WithExportConfig, WithHttpConfig, WithTonicConfig,
};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::config::{ExportTarget, Protocol};

/// Why an OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// The trusted-certificate file (`OTEL_EXPORTER_OTLP_CERTIFICATE`) could not be read.
    #[error("cannot read the certificate file {}: {source}", path.display())]
    CertificateFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TLS could not be set up (rustls refused the configuration).
    #[error("TLS: {0}")]
    Tls(String),
    /// The gRPC exporter's runtime could not be started.
    #[error("starting its runtime: {0}")]
    Runtime(std::io::Error),
    /// The HTTP client could not be built.
    #[error("the HTTP client: {0}")]
    HttpClient(String),
    /// `opentelemetry-otlp` refused the configuration.
    #[error("{0}")]
    Build(String),
    /// The thread building the exporter panicked.
    #[error("building the exporter panicked")]
    Panicked,
}

/// The Tokio runtime the gRPC channel runs on; shut down without blocking when dropped.
#[derive(Debug, Default)]
pub(crate) struct ExportRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ExportRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// The first of the signal-specific and the generic `OTEL_EXPORTER_OTLP_*` variable `name`.
fn otlp_var(env: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
        .or_else(|| env(&format!("OTEL_EXPORTER_OTLP_{name}")))
        .filter(|v| !v.trim().is_empty())
}

/// The export timeout: `OTEL_EXPORTER_OTLP_{TRACES_,}TIMEOUT` (ms) when set, else `default`.
fn timeout(env: &impl Fn(&str) -> Option<String>, default: Duration) -> Duration {
    otlp_var(env, "TIMEOUT")
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// `OTEL_EXPORTER_OTLP_{TRACES_,}COMPRESSION`: `gzip`, or `none` / unset.
fn compression(
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Option<Compression>, ExporterError> {
    match otlp_var(env, "COMPRESSION").as_deref().map(str::trim) {
        None | Some("none") => Ok(None),
        Some("gzip") => Ok(Some(Compression::Gzip)),
        Some(other) => Err(ExporterError::Build(format!(
            "OTEL_EXPORTER_OTLP_COMPRESSION {other:?} is not supported (gzip or none)"
        ))),
    }
}

/// The PEM of the extra trusted certificate(s), when `OTEL_EXPORTER_OTLP_CERTIFICATE` names
/// a file.
fn extra_roots(env: &impl Fn(&str) -> Option<String>) -> Result<Option<Vec<u8>>, ExporterError> {
    let Some(path) = otlp_var(env, "CERTIFICATE").map(PathBuf::from) else {
        return Ok(None);
    };
    let pem = std::fs::read(&path).map_err(|source| ExporterError::CertificateFile {
        path: path.clone(),
        source,
    })?;
    Ok(Some(pem))
}

/// Builds the exporter for `target`; must run outside any async runtime (the blocking HTTP
/// client panics inside one). Returns the runtime the gRPC channel needs, if any.
pub(crate) fn build(
    target: &ExportTarget,
    default_timeout: Duration,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(ExportRuntime, opentelemetry_otlp::SpanExporter), ExporterError> {
    let timeout = timeout(&env, default_timeout);
    let extra = extra_roots(&env)?;
    let compression = compression(&env)?;
    let https = target.endpoint.starts_with("https://");
    match target.protocol {
        Protocol::Grpc => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("wayfinder-otlp")
                .enable_all()
                .build()
                .map_err(ExporterError::Runtime)?;
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(target.endpoint.clone())
                .with_timeout(timeout);
            if let Some(c) = compression {
                builder = builder.with_compression(c);
            }
            if https {
                // tonic's TLS takes rustls's process-wide provider; with both aws-lc-rs and ring
                // compiled in (ureq, for Hub downloads, brings ring) rustls cannot pick one
                // itself. Ours is aws-lc-rs; an error means one is installed already.
                let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                let mut tls = ClientTlsConfig::new().with_native_roots();
                if let Some(pem) = &extra {
                    tls = tls.ca_certificate(Certificate::from_pem(pem));
                }
                builder = builder.with_tls_config(tls);
            }
            // The channel connects lazily, on the runtime it is made in.
            let exporter = {
                let _entered = runtime.enter();
                builder.build()
            }
            .map_err(|e| ExporterError::Build(e.to_string()))?;
            Ok((ExportRuntime(Some(runtime)), exporter))
        }
        Protocol::HttpProtobuf => {
            // Our rustls configuration, with the certificate file's roots added.
            let client = reqwest::blocking::Client::builder()
                .timeout(timeout)
                .tls_backend_preconfigured(rustls_config(extra.as_deref())?)
                .build()
                .map_err(|e| ExporterError::HttpClient(e.to_string()))?;
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(OtlpProtocol::HttpBinary)
                .with_endpoint(target.endpoint.clone())
                .with_timeout(timeout);
            if let Some(c) = compression {
                builder = builder.with_compression(c);
            }
            let exporter = builder
                .build()
                .map_err(|e| ExporterError::Build(e.to_string()))?;
            Ok((ExportRuntime::default(), exporter))
        }
    }
}

/// A rustls client configuration (aws-lc-rs) trusting the system's roots and `extra` (PEM).
fn rustls_config(extra: Option<&[u8]>) -> Result<rustls::ClientConfig, ExporterError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped, as every rustls user does.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(ExporterError::Tls(
                "the certificate file holds no PEM certificate".into(),
            ));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ExporterError::Tls(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ExporterError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_traces_variable_wins_over_the_generic_one() {
        let vars = [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "100"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
        ];
        assert_eq!(
            timeout(&env(&vars), Duration::from_secs(9)),
            Duration::from_millis(250)
        );
        assert_eq!(
            timeout(&env(&vars[..1]), Duration::from_secs(9)),
            Duration::from_millis(100)
        );
        assert_eq!(
            timeout(&env(&[]), Duration::from_secs(9)),
            Duration::from_secs(9)
        );
    }

    #[test]
    fn compression_is_gzip_or_none() {
        let gzip = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")];
        assert!(matches!(
            compression(&env(&gzip)),
            Ok(Some(Compression::Gzip))
        ));
        assert!(matches!(compression(&env(&[])), Ok(None)));
        let zip = [("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zip")];
        assert!(compression(&env(&zip)).is_err());
    }

    #[test]
    fn a_missing_certificate_file_is_named() {
        let vars = [("OTEL_EXPORTER_OTLP_CERTIFICATE", "/no/such/ca.pem")];
        let err = extra_roots(&env(&vars)).expect_err("missing file");
        assert!(err.to_string().contains("/no/such/ca.pem"), "{err}");
    }

    #[test]
    fn a_file_without_a_certificate_is_refused() {
        assert!(matches!(
            rustls_config(Some(b"not a certificate")),
            Err(ExporterError::Tls(_))
        ));
    }
}
