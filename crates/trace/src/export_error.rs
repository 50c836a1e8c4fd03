//! Why an OTLP exporter could not be built: its headers (`OTEL_EXPORTER_OTLP_*HEADERS`), its
//! endpoint, or what it runs on. Wrapped in [`TraceError::Exporter`](crate::TraceError) with
//! the protocol and endpoint.

/// Why an OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// An entry of the headers variable has no `=`.
    #[error("OTLP header {0:?} is not key=value")]
    HeaderNotKeyValue(String),
    /// A header's value is not UTF-8 once percent-decoded.
    #[error("OTLP header {name:?}: {source}")]
    HeaderNotUtf8 {
        /// The header's name, as written.
        name: String,
        /// The cause.
        source: std::str::Utf8Error,
    },
    /// A header's name is not a valid HTTP header name.
    #[error("OTLP header name {name:?}: {source}")]
    HeaderName {
        /// The header's name.
        name: String,
        /// The cause.
        source: http::header::InvalidHeaderName,
    },
    /// A header's value is not a valid HTTP header value.
    #[error("OTLP header {name:?}: {source}")]
    HeaderValue {
        /// The header's name.
        name: String,
        /// The cause.
        source: http::header::InvalidHeaderValue,
    },
    /// The endpoint is not a URL the gRPC channel can use.
    #[error("invalid endpoint: {0}")]
    Endpoint(#[source] tonic::transport::Error),
    /// The gRPC exporter's runtime could not be started.
    #[error("starting its runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The blocking HTTP client could not be built.
    #[error("the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    /// The thread building the HTTP client panicked.
    #[error("the HTTP client's thread panicked")]
    HttpClientPanicked,
    /// The thread building the exporter panicked.
    #[error("building the exporter panicked")]
    Panicked,
}
