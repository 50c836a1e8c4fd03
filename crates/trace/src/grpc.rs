//! OTLP/gRPC span export without a copy of each batch.
//!
//! `opentelemetry-otlp`'s tonic exporter deep-copies every batch before converting it (so that
//! it can retry), and its messages are encoded and freed on the runtime's thread, far from the
//! thread that made them (perf on the tracing benchmark: a fifth of a traced request's CPU).
//! This exporter writes the batch's protobuf straight from the spans ([`crate::encode`], no
//! intermediate messages), behind its gRPC message header, into a reused buffer
//! ([`BufferPool`]) on the batch processor's thread; the provider's runtime sends those bytes
//! as they are as the body of a unary gRPC call over tonic's channel (tonic's own codec would
//! copy them into a fresh buffer of its own first) and reads the `grpc-status` that answers
//! it. It does not retry: a failed batch is dropped and counted (the contract: tracing never
//! holds a request up). Headers come from `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else
//! `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`).

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue, TE};
use http_body_util::{BodyExt, Full};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tonic::Status;
use tonic::codegen::Service;
use tonic::transport::{Channel, Endpoint};

use crate::buffers::BufferPool;
use crate::encode::{
    EncodedResource, Framing, export_request_into, otlp_headers, with_otlp_headers,
};
use crate::export::chain;
use crate::export_error::ExporterError;

/// The exporter; see the module docs.
#[derive(Debug)]
pub(crate) struct GrpcExporter {
    channel: Channel,
    resource: EncodedResource,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
    /// Every request's headers: gRPC's, then the OTLP headers.
    headers: HeaderMap,
    buffers: BufferPool,
}

impl GrpcExporter {
    /// Connects lazily to `endpoint`; must be called inside `runtime`.
    pub(crate) fn new(
        endpoint: &str,
        timeout: Duration,
        runtime: tokio::runtime::Handle,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ExporterError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(ExporterError::Endpoint)?
            .timeout(timeout)
            .connect_lazy();
        let headers = request_headers(&otlp_headers(env)?)?;
        Ok(Self {
            channel,
            resource: EncodedResource::default(),
            runtime,
            timeout,
            headers,
            buffers: BufferPool::default(),
        })
    }
}

/// The method of OTLP's trace service.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A unary gRPC call's headers, with the OTLP headers after them.
fn request_headers(otlp: &[(String, String)]) -> Result<HeaderMap, ExporterError> {
    let mut map = HeaderMap::new();
    map.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    map.insert(TE, HeaderValue::from_static("trailers"));
    with_otlp_headers(map, otlp)
}

/// Why an export call failed.
#[derive(Debug)]
enum CallError {
    /// No answer: the connection could not be made or broke.
    Transport(String),
    /// The collector answered with an error.
    Answer(Status),
}

impl From<Status> for CallError {
    fn from(status: Status) -> Self {
        Self::Answer(status)
    }
}

/// Sends one framed `ExportTraceServiceRequest` and reads the call's outcome: the
/// `grpc-status` of a trailers-only answer, else of the trailers after the body (the
/// `ExportTraceServiceResponse`, whose partial-success details nothing reads).
async fn unary(mut channel: Channel, headers: HeaderMap, body: Bytes) -> Result<(), CallError> {
    let mut request = http::Request::new(tonic::body::Body::new(Full::new(body)));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = http::Uri::from_static(EXPORT_PATH);
    *request.headers_mut() = headers;
    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| CallError::Transport(chain(&e)))?;
    let response = channel
        .call(request)
        .await
        .map_err(|e| CallError::Transport(chain(&e)))?;
    let (parts, body) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(Status::unknown(format!("HTTP status {}", parts.status)).into());
    }
    let status = match Status::from_header_map(&parts.headers) {
        Some(status) => status,
        None => {
            let collected = body
                .collect()
                .await
                .map_err(|e| CallError::Transport(e.to_string()))?;
            collected
                .trailers()
                .and_then(Status::from_header_map)
                .ok_or_else(|| Status::internal("the answer has no grpc-status"))?
        }
    };
    match status.code() {
        tonic::Code::Ok => Ok(()),
        _ => Err(status.into()),
    }
}

impl SpanExporter for GrpcExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut buf = self.buffers.take();
        let start = export_request_into(&mut buf, &batch, &self.resource, Framing::Grpc);
        drop(batch);
        let body = self.buffers.share(buf, start);
        let call = unary(self.channel.clone(), self.headers.clone(), body);
        let timeout = self.timeout;
        // The timer is made on the runtime: the batch thread has none.
        match self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, call).await })
            .await
        {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(CallError::Answer(status)))) => Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {}: {}",
                status.code(),
                status.message()
            ))),
            Ok(Ok(Err(CallError::Transport(e)))) => Err(OTelSdkError::InternalFailure(format!(
                "cannot reach the collector: {e}"
            ))),
            Ok(Err(_)) => Err(OTelSdkError::Timeout(timeout)),
            Err(e) => Err(OTelSdkError::InternalFailure(e.to_string())),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::request_headers;

    #[test]
    fn otlp_headers_follow_the_grpc_headers() {
        let map = request_headers(&[("api-key".into(), "se cret".into())]).expect("valid");
        assert_eq!(
            map.get("api-key").and_then(|v| v.to_str().ok()),
            Some("se cret")
        );
        assert_eq!(
            map.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/grpc"[..])
        );
        assert_eq!(map.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
        assert!(request_headers(&[("bad key".into(), "v".into())]).is_err());
    }
}
