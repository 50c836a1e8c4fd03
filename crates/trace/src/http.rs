//! OTLP/HTTP span export with protobuf bodies.
//!
//! The batch's protobuf is written straight from the spans ([`crate::encode`], as for gRPC)
//! into a reused buffer ([`BufferPool`]) on the batch processor's thread and POSTed to the traces endpoint with a blocking client, so the
//! batch thread needs no async runtime. No retry: a failed batch is dropped and counted (the
//! contract: tracing never holds a request up). Headers: [`otlp_headers`].

use std::time::Duration;

use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::buffers::BufferPool;
use crate::encode::{
    EncodedResource, Framing, export_request_into, otlp_headers, with_otlp_headers,
};
use crate::export::chain;
use crate::export_error::ExporterError;

/// The exporter; see the module docs.
#[derive(Debug)]
pub(crate) struct HttpExporter {
    client: Client,
    endpoint: String,
    resource: EncodedResource,
    buffers: BufferPool,
}

impl HttpExporter {
    /// An exporter POSTing to `endpoint` (the full URL, `/v1/traces` included).
    pub(crate) fn new(
        endpoint: &str,
        timeout: Duration,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ExporterError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let headers = with_otlp_headers(headers, &otlp_headers(env)?)?;
        // The blocking client owns a runtime, which must not be made (or dropped) inside
        // another: build it on a thread of its own, wherever `new` is called from.
        let client = std::thread::spawn(move || {
            Client::builder()
                .timeout(timeout)
                .default_headers(headers)
                .build()
        })
        .join()
        .map_err(|_| ExporterError::HttpClientPanicked)?
        .map_err(ExporterError::HttpClient)?;
        Ok(Self {
            client,
            endpoint: endpoint.to_owned(),
            resource: EncodedResource::default(),
            buffers: BufferPool::default(),
        })
    }
}

impl SpanExporter for HttpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut buf = self.buffers.take();
        let start = export_request_into(&mut buf, &batch, &self.resource, Framing::None);
        drop(batch);
        let body = self.buffers.share(buf, start);
        let response = self
            .client
            .post(&self.endpoint)
            .body(body)
            .send()
            .map_err(|e| {
                OTelSdkError::InternalFailure(format!("cannot reach the collector: {}", chain(&e)))
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            let text = response.text().unwrap_or_default();
            Err(OTelSdkError::InternalFailure(format!(
                "the collector answered {status}: {}",
                text.chars().take(200).collect::<String>()
            )))
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}
