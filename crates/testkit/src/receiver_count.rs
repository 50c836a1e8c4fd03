//! The counting receiver's side: spans counted by walking an `ExportTraceServiceRequest`'s
//! outer messages (`ResourceSpans` → `ScopeSpans` → `Span` fields) without building them.
//!
//! The tracing benchmark's receiver stands in for a collector on another machine, but runs on
//! the benchmark's two cores; decoding every span into owned messages cost it about as much
//! CPU as the server's own tracing, and that competition for the cores was counted in the
//! server's figures. Counting costs it a walk over the bytes.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Buf;
use prost::encoding::{WireType, decode_key, decode_varint};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Status, body::Body};

/// Why a request's spans could not be counted: it is not a well-formed protobuf message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CountError {
    /// A field's key or a varint could not be read.
    #[error(transparent)]
    Decode(#[from] prost::DecodeError),
    /// A length does not fit in memory.
    #[error(transparent)]
    Length(#[from] std::num::TryFromIntError),
    /// A field's bytes run past the end of the message.
    #[error("field {0} runs past the message")]
    RunsPast(u32),
    /// A field has a wire type protobuf no longer uses (groups).
    #[error("field {tag} has wire type {wire_type:?}")]
    WireType {
        /// The field's tag.
        tag: u32,
        /// Its wire type.
        wire_type: WireType,
    },
}

/// The number of spans in the encoded `ExportTraceServiceRequest` `buf`.
pub(crate) fn count_spans(buf: &[u8]) -> Result<usize, CountError> {
    let mut n = 0;
    // ExportTraceServiceRequest.resource_spans = 1, ResourceSpans.scope_spans = 2,
    // ScopeSpans.spans = 2.
    fields(buf, |tag, resource_spans| {
        if tag == 1 {
            fields(resource_spans, |tag, scope_spans| {
                if tag == 2 {
                    fields(scope_spans, |tag, _| {
                        n += usize::from(tag == 2);
                        Ok(())
                    })?;
                }
                Ok(())
            })?;
        }
        Ok(())
    })?;
    Ok(n)
}

/// Calls `f` with the tag and bytes of every length-delimited field of the message `buf`;
/// other fields are skipped.
fn fields(
    mut buf: &[u8],
    mut f: impl FnMut(u32, &[u8]) -> Result<(), CountError>,
) -> Result<(), CountError> {
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf)?;
        let skip = match wire_type {
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut buf)?)?;
                if len > buf.len() {
                    return Err(CountError::RunsPast(tag));
                }
                f(tag, &buf[..len])?;
                len
            }
            WireType::Varint => {
                decode_varint(&mut buf)?;
                0
            }
            WireType::SixtyFourBit => 8,
            WireType::ThirtyTwoBit => 4,
            wire_type => return Err(CountError::WireType { tag, wire_type }),
        };
        if skip > buf.len() {
            return Err(CountError::RunsPast(tag));
        }
        buf.advance(skip);
    }
    Ok(())
}

/// OTLP's trace service, counting into `count`.
#[derive(Debug, Clone)]
pub(crate) struct CountingService {
    pub(crate) count: std::sync::Arc<AtomicUsize>,
}

impl NamedService for CountingService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tonic::codegen::Service<http::Request<Body>> for CountingService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let count = self.count.clone();
        Box::pin(async move {
            if !request.uri().path().ends_with("/Export") {
                return Ok(Status::unimplemented("only Export").into_http());
            }
            Ok(Grpc::new(SpanCount).unary(Count(count), request).await)
        })
    }
}

/// The Export method: adds the request's spans.
struct Count(std::sync::Arc<AtomicUsize>);

impl UnaryService<usize> for Count {
    type Response = ();
    type Future = Ready<Result<tonic::Response<()>, Status>>;

    fn call(&mut self, request: tonic::Request<usize>) -> Self::Future {
        self.0.fetch_add(request.into_inner(), Ordering::Relaxed);
        ready(Ok(tonic::Response::new(())))
    }
}

/// Decodes a request to its span count; the answer, an empty
/// `ExportTraceServiceResponse`, is zero bytes.
#[derive(Debug, Clone, Copy)]
struct SpanCount;

impl Codec for SpanCount {
    type Encode = ();
    type Decode = usize;
    type Encoder = SpanCount;
    type Decoder = SpanCount;

    fn encoder(&mut self) -> Self::Encoder {
        SpanCount
    }

    fn decoder(&mut self) -> Self::Decoder {
        SpanCount
    }
}

impl Encoder for SpanCount {
    type Item = ();
    type Error = Status;

    fn encode(&mut self, _item: (), _dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        Ok(())
    }
}

impl Decoder for SpanCount {
    type Item = usize;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<usize>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        count_spans(&bytes)
            .map(Some)
            .map_err(|e| Status::invalid_argument(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::KeyValue;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message;

    use super::count_spans;

    fn scope(spans: usize) -> ScopeSpans {
        ScopeSpans {
            spans: (0..spans)
                .map(|i| Span {
                    name: format!("span {i}"),
                    start_time_unix_nano: 17,
                    attributes: vec![KeyValue {
                        key: "k".into(),
                        ..KeyValue::default()
                    }],
                    ..Span::default()
                })
                .collect(),
            schema_url: "s".into(),
            ..ScopeSpans::default()
        }
    }

    #[test]
    fn spans_are_counted_across_resources_and_scopes() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![scope(3), scope(0), scope(200)],
                    schema_url: "r".into(),
                },
                ResourceSpans {
                    scope_spans: vec![scope(1)],
                    ..ResourceSpans::default()
                },
            ],
        };
        let bytes = request.encode_to_vec();
        assert_eq!(count_spans(&bytes), Ok(204));
        assert_eq!(count_spans(&[]), Ok(0));
        assert!(count_spans(&bytes[..bytes.len() - 1]).is_err(), "cut short");
    }
}
