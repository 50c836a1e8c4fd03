//! OTLP protobuf, written straight from the SDK's [`SpanData`].
//!
//! `opentelemetry-proto`'s conversion builds a tree of owned messages first — a `String` for
//! every attribute key and string value, a `Vec` for every id — and then encodes and frees it;
//! for a journey (two spans, nine events, about sixty attributes) that is a hundred and more
//! allocations per request. This writer walks the batch once and emits the same
//! `ExportTraceServiceRequest` bytes: a nested message's length is a one-byte placeholder,
//! widened in place when the message turns out longer than 127 bytes. The tests decode its
//! output with `opentelemetry-proto`'s types and compare it with that crate's conversion.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanContext, SpanKind, Status};
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SpanData;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use crate::export_error::ExporterError;

/// The span flags bit saying whether the parent is remote is meaningful (OTLP `SpanFlags`).
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// The span flags bit saying the parent is remote.
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The resource, encoded once per exporter.
#[derive(Debug, Clone, Default)]
pub(crate) struct EncodedResource {
    /// The `Resource` message's body (its attributes).
    body: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub(crate) fn new(resource: &Resource) -> Self {
        let mut w = Writer::default();
        for (k, v) in resource.iter() {
            w.message(1, |w| {
                w.string(1, k.as_str());
                w.message(2, |w| w.any_value(v));
            });
        }
        Self {
            body: w.buf,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// How an encoded request is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// The bare message (OTLP/HTTP).
    None,
    /// Behind gRPC's five-byte message header (uncompressed flag, big-endian length).
    Grpc,
}

/// Bytes kept free at the front of the buffer: gRPC's message header, the
/// `resource_spans` key and the longest length a `u32` takes.
const FRONT: usize = 5 + 1 + 5;

/// Writes an `ExportTraceServiceRequest` holding `batch` under `resource` into `buf`
/// (cleared first; its capacity is kept, so a reused buffer takes no new memory), framed as
/// `framing` says, and returns where the request starts in `buf`. Spans are grouped by
/// instrumentation scope in the order the scopes first appear.
///
/// The one `ResourceSpans` is written after [`FRONT`] free bytes and its key and length go
/// right before it once its length is known, so the ~0.5 MiB body of a full batch is never
/// shifted to make room for them.
pub(crate) fn export_request_into(
    buf: &mut Vec<u8>,
    batch: &[SpanData],
    resource: &EncodedResource,
    framing: Framing,
) -> usize {
    buf.clear();
    buf.reserve(FRONT + batch.len() * 1024 + resource.body.len() + 64);
    buf.resize(FRONT, 0);
    let mut w = Writer {
        buf: std::mem::take(buf),
    };
    w.resource_spans(batch, resource);
    *buf = w.buf;
    let body_len = buf.len() - FRONT;
    let mut head = [0u8; FRONT - 5];
    let head_len = {
        let mut cursor = &mut head[..];
        encode_key(1, WireType::LengthDelimited, &mut cursor);
        encode_varint(body_len as u64, &mut cursor);
        FRONT - 5 - cursor.len()
    };
    let mut start = FRONT - head_len;
    buf[start..FRONT].copy_from_slice(&head[..head_len]);
    if framing == Framing::Grpc {
        let message_len = u32::try_from(head_len + body_len).unwrap_or(u32::MAX);
        start -= 5;
        buf[start] = 0;
        buf[start + 1..start + 5].copy_from_slice(&message_len.to_be_bytes());
    }
    start
}

/// An `ExportTraceServiceRequest` holding `batch` under `resource`, in a buffer of its own.
#[cfg(test)]
pub(crate) fn export_request(batch: &[SpanData], resource: &EncodedResource) -> Vec<u8> {
    let mut buf = Vec::new();
    let start = export_request_into(&mut buf, batch, resource, Framing::None);
    buf.split_off(start)
}

/// A protobuf writer; fields at their default values are left out, as prost does.
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// The body of the one `ResourceSpans`: the resource, a `ScopeSpans` per scope, the
    /// resource's schema URL.
    fn resource_spans(&mut self, batch: &[SpanData], resource: &EncodedResource) {
        let mut scopes: Vec<&opentelemetry::InstrumentationScope> = Vec::new();
        for span in batch {
            if !scopes.contains(&&span.instrumentation_scope) {
                scopes.push(&span.instrumentation_scope);
            }
        }
        self.message(1, |w| w.raw(&resource.body));
        for scope in scopes {
            // ~1 KiB a journey span: a full batch's scope takes a 3-byte length.
            let spans = batch
                .iter()
                .filter(|s| &s.instrumentation_scope == scope)
                .count();
            self.message_sized(2, encoded_len_varint(spans as u64 * 1024), |w| {
                w.message(1, |w| {
                    w.string(1, scope.name());
                    w.string(2, scope.version().unwrap_or_default());
                    w.attributes(3, scope.attributes());
                });
                for span in batch.iter().filter(|s| &s.instrumentation_scope == scope) {
                    // Spans run from a few hundred bytes to a few KiB.
                    w.message_sized(2, 2, |w| w.span(span));
                }
                w.string(3, scope.schema_url().unwrap_or_default());
            });
        }
        self.string(3, &resource.schema_url);
    }

    /// Field `tag` holding the message `body` writes.
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        self.message_sized(tag, 1, body);
    }

    /// [`Self::message`] for a message expected to take a `width`-byte length (2: 128 bytes
    /// to 16 KiB, 3: to 2 MiB): that much room is kept for the length before the body is
    /// written, so the body only moves when the guess was wrong.
    fn message_sized(&mut self, tag: u32, guess: usize, body: impl FnOnce(&mut Self)) {
        encode_key(tag, WireType::LengthDelimited, &mut self.buf);
        let at = self.buf.len();
        self.buf.resize(at + guess, 0);
        body(self);
        let end = self.buf.len();
        let len = end - at - guess;
        let width = encoded_len_varint(len as u64);
        if width != guess {
            // Make the room the length takes: move the body.
            if width > guess {
                self.buf.resize(end + width - guess, 0);
            }
            self.buf.copy_within(at + guess..end, at + width);
            self.buf.truncate(at + width + len);
        }
        let mut prefix = [0u8; 10];
        let mut slice = &mut prefix[..];
        encode_varint(len as u64, &mut slice);
        self.buf[at..at + width].copy_from_slice(&prefix[..width]);
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn bytes(&mut self, tag: u32, b: &[u8]) {
        if !b.is_empty() {
            self.bytes_always(tag, b);
        }
    }

    fn bytes_always(&mut self, tag: u32, b: &[u8]) {
        encode_key(tag, WireType::LengthDelimited, &mut self.buf);
        encode_varint(b.len() as u64, &mut self.buf);
        self.buf.extend_from_slice(b);
    }

    fn string(&mut self, tag: u32, s: &str) {
        self.bytes(tag, s.as_bytes());
    }

    fn varint(&mut self, tag: u32, v: u64) {
        if v != 0 {
            encode_key(tag, WireType::Varint, &mut self.buf);
            encode_varint(v, &mut self.buf);
        }
    }

    fn fixed32(&mut self, tag: u32, v: u32) {
        if v != 0 {
            encode_key(tag, WireType::ThirtyTwoBit, &mut self.buf);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn fixed64(&mut self, tag: u32, v: u64) {
        if v != 0 {
            encode_key(tag, WireType::SixtyFourBit, &mut self.buf);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn attributes<'a>(&mut self, tag: u32, attrs: impl IntoIterator<Item = &'a KeyValue>) {
        for kv in attrs {
            self.message(tag, |w| {
                w.string(1, kv.key.as_str());
                w.message(2, |w| w.any_value(&kv.value));
            });
        }
    }

    /// The body of an `AnyValue` (a oneof: written even at its default).
    fn any_value(&mut self, v: &Value) {
        match v {
            Value::String(s) => self.bytes_always(1, s.as_str().as_bytes()),
            Value::Bool(b) => {
                encode_key(2, WireType::Varint, &mut self.buf);
                encode_varint(u64::from(*b), &mut self.buf);
            }
            Value::I64(i) => {
                encode_key(3, WireType::Varint, &mut self.buf);
                encode_varint(*i as u64, &mut self.buf);
            }
            Value::F64(f) => {
                encode_key(4, WireType::SixtyFourBit, &mut self.buf);
                self.buf.extend_from_slice(&f.to_le_bytes());
            }
            Value::Array(a) => self.message(5, |w| match a {
                Array::Bool(vs) => vs.iter().for_each(|v| w.array_item(&Value::Bool(*v))),
                Array::I64(vs) => vs.iter().for_each(|v| w.array_item(&Value::I64(*v))),
                Array::F64(vs) => vs.iter().for_each(|v| w.array_item(&Value::F64(*v))),
                Array::String(vs) => vs
                    .iter()
                    .for_each(|v| w.message(1, |w| w.bytes_always(1, v.as_str().as_bytes()))),
                // `Array` is non-exhaustive; a kind this version does not know is left empty.
                _ => {}
            }),
            // `Value` is non-exhaustive; a kind this version does not know becomes its text.
            other => self.bytes_always(1, other.as_str().as_bytes()),
        }
    }

    fn array_item(&mut self, v: &Value) {
        self.message(1, |w| w.any_value(v));
    }

    fn span(&mut self, s: &SpanData) {
        self.context_ids(&s.span_context);
        if s.parent_span_id != opentelemetry::trace::SpanId::INVALID {
            self.bytes(4, &s.parent_span_id.to_bytes());
        }
        self.string(5, &s.name);
        self.varint(6, kind(&s.span_kind));
        self.fixed64(7, nanos(s.start_time));
        self.fixed64(8, nanos(s.end_time));
        self.attributes(9, &s.attributes);
        self.varint(10, u64::from(s.dropped_attributes_count));
        for e in s.events.iter() {
            // A journey event's eleven attributes take ~350 bytes; an API event's one to
            // three, under 128.
            let guess = if e.attributes.len() > 3 { 2 } else { 1 };
            self.message_sized(11, guess, |w| {
                w.fixed64(1, nanos(e.timestamp));
                w.string(2, &e.name);
                w.attributes(3, &e.attributes);
                w.varint(4, u64::from(e.dropped_attributes_count));
            });
        }
        self.varint(12, u64::from(s.events.dropped_count));
        for l in s.links.iter() {
            self.message(13, |w| {
                w.context_ids(&l.span_context);
                w.attributes(4, &l.attributes);
                w.varint(5, u64::from(l.dropped_attributes_count));
                w.fixed32(6, flags(&l.span_context, l.span_context.is_remote()));
            });
        }
        self.varint(14, u64::from(s.links.dropped_count));
        self.message(15, |w| match &s.status {
            Status::Unset => {}
            Status::Ok => w.varint(3, 1),
            Status::Error { description } => {
                w.string(2, description);
                w.varint(3, 2);
            }
        });
        self.fixed32(16, flags(&s.span_context, s.parent_span_is_remote));
    }

    /// Trace id (1), span id (2) and trace state (3), as spans and links both number them.
    fn context_ids(&mut self, cx: &SpanContext) {
        self.bytes(1, &cx.trace_id().to_bytes());
        self.bytes(2, &cx.span_id().to_bytes());
        let state = cx.trace_state().header();
        self.string(3, &state);
    }
}

/// OTLP's span kind numbers.
fn kind(k: &SpanKind) -> u64 {
    match k {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// The trace flags with OTLP's "is the parent remote" bits.
fn flags(cx: &SpanContext, remote: bool) -> u32 {
    let base = u32::from(cx.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE;
    if remote {
        base | CONTEXT_IS_REMOTE
    } else {
        base
    }
}

/// The headers every OTLP request carries: `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else
/// `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,k2=v2`, values percent-decoded, names lower-cased).
pub(crate) fn otlp_headers(
    env: impl Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, ExporterError> {
    let Some(s) =
        env("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| env("OTEL_EXPORTER_OTLP_HEADERS"))
    else {
        return Ok(Vec::new());
    };
    let mut headers = Vec::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| ExporterError::HeaderNotKeyValue(pair.to_owned()))?;
        let value = percent_encoding::percent_decode_str(v.trim())
            .decode_utf8()
            .map_err(|source| ExporterError::HeaderNotUtf8 {
                name: k.to_owned(),
                source,
            })?;
        headers.push((k.trim().to_ascii_lowercase(), value.into_owned()));
    }
    Ok(headers)
}

/// `map` with the OTLP headers `otlp` ([`otlp_headers`]) added.
pub(crate) fn with_otlp_headers(
    mut map: http::HeaderMap,
    otlp: &[(String, String)],
) -> Result<http::HeaderMap, ExporterError> {
    for (k, v) in otlp {
        let name = http::HeaderName::from_bytes(k.as_bytes()).map_err(|source| {
            ExporterError::HeaderName {
                name: k.clone(),
                source,
            }
        })?;
        let value =
            http::HeaderValue::from_str(v).map_err(|source| ExporterError::HeaderValue {
                name: k.clone(),
                source,
            })?;
        map.insert(name, value);
    }
    Ok(map)
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use opentelemetry::trace::{Event, Link, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry::{InstrumentationScope, StringValue};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + ms)
    }

    fn every_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("s", "text"),
            KeyValue::new("empty", ""),
            KeyValue::new("owned", "é ü – long ".repeat(20)),
            KeyValue::new("t", true),
            KeyValue::new("f", false),
            KeyValue::new("zero", 0i64),
            KeyValue::new("neg", -5i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("d", 0.25),
            KeyValue::new("d0", 0.0),
            KeyValue::new(
                "reasons",
                Value::Array(Array::String(vec![StringValue::from("stop"), "".into()])),
            ),
            KeyValue::new("ints", Value::Array(Array::I64(vec![0, 1, -2]))),
            KeyValue::new("bools", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("floats", Value::Array(Array::F64(vec![0.0, 1.5]))),
            KeyValue::new("none", Value::Array(Array::I64(Vec::new()))),
        ]
    }

    fn span(scope: &InstrumentationScope, i: u64, status: Status, remote: bool) -> SpanData {
        let state = TraceState::from_key_value([("vendor", "v1")]).expect("valid");
        let cx = SpanContext::new(
            TraceId::from(0x1234_5678_9abc_def0_u128 + u128::from(i)),
            SpanId::from(0x42 + i),
            TraceFlags::SAMPLED,
            false,
            if i.is_multiple_of(2) {
                state.clone()
            } else {
                TraceState::default()
            },
        );
        let events = (0..i as usize + 1)
            .map(|e| {
                Event::new(
                    format!("journey.E{e}"),
                    at(i + e as u64),
                    every_value(),
                    e as u32,
                )
            })
            .collect();
        let link_cx = SpanContext::new(
            TraceId::from(7),
            SpanId::from(8),
            TraceFlags::default(),
            true,
            state,
        );
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        span_events.dropped_count = 3;
        let mut links = SpanLinks::default();
        links.links = vec![Link::new(link_cx, every_value(), 1)];
        SpanData {
            span_context: cx,
            parent_span_id: if i == 0 {
                SpanId::INVALID
            } else {
                SpanId::from(i)
            },
            parent_span_is_remote: remote,
            span_kind: [SpanKind::Server, SpanKind::Internal, SpanKind::Client][i as usize % 3]
                .clone(),
            name: Cow::Borrowed("llm_request"),
            start_time: at(i),
            end_time: at(i + 1000),
            attributes: every_value(),
            dropped_attributes_count: i as u32,
            events: span_events,
            links,
            status,
            instrumentation_scope: scope.clone(),
        }
    }

    #[test]
    fn the_bytes_decode_to_what_the_proto_crate_converts() {
        let api = InstrumentationScope::builder("wayfinder.api")
            .with_version("0.1.0")
            .build();
        let core = InstrumentationScope::builder("wayfinder.scheduler")
            .with_schema_url("https://example.com/schema")
            .with_attributes([KeyValue::new("scope.attr", 1i64)])
            .build();
        let batch = vec![
            span(&api, 0, Status::Unset, false),
            span(&core, 1, Status::error("engine failed"), true),
            span(&api, 2, Status::Ok, true),
            span(&core, 3, Status::Unset, false),
        ];
        let resource = Resource::builder_empty()
            .with_attributes([
                KeyValue::new("service.name", "wayfinder"),
                KeyValue::new("process.pid", 42i64),
            ])
            .with_schema_url([], "https://example.com/resource")
            .build();
        let ours = ExportTraceServiceRequest::decode(
            export_request(&batch, &EncodedResource::new(&resource)).as_slice(),
        )
        .expect("valid protobuf");
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(batch, &(&resource).into()),
        };
        assert_eq!(ours, theirs);
        assert_eq!(ours.resource_spans[0].scope_spans.len(), 2);
        assert_eq!(ours.resource_spans[0].scope_spans[0].spans.len(), 2);
    }

    #[test]
    fn headers_parse_with_percent_decoding_and_the_traces_variable_wins() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let got = otlp_headers(env(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "api-key=se%20cret, X-Team = core ,",
        )]))
        .expect("parses");
        assert_eq!(
            got,
            [
                ("api-key".to_owned(), "se cret".to_owned()),
                ("x-team".into(), "core".into())
            ]
        );
        let got = otlp_headers(env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
        ]))
        .expect("parses");
        assert_eq!(got, [("b".to_owned(), "2".to_owned())]);
        assert!(otlp_headers(env(&[("OTEL_EXPORTER_OTLP_HEADERS", "no-equals")])).is_err());
        assert!(otlp_headers(env(&[])).expect("none").is_empty());
    }

    #[test]
    fn grpc_framing_and_a_reused_buffer_give_the_same_message() {
        let api = InstrumentationScope::builder("wayfinder.api").build();
        let batch: Vec<SpanData> = (0..40)
            .map(|i| span(&api, i, Status::Unset, false))
            .collect();
        let resource = EncodedResource::new(&Resource::builder_empty().build());
        let bare = export_request(&batch, &resource);
        assert!(bare.len() > 16_384, "long enough for a three-byte length");
        // A buffer that held a longer request before, with stale bytes in it.
        let mut buf = vec![0xAB; 3 * bare.len()];
        let start = export_request_into(&mut buf, &batch, &resource, Framing::Grpc);
        let framed = &buf[start..];
        assert_eq!(framed[0], 0, "not compressed");
        let len = u32::from_be_bytes(framed[1..5].try_into().expect("four bytes"));
        assert_eq!(len as usize, bare.len());
        assert_eq!(&framed[5..], bare.as_slice());
        let decoded = ExportTraceServiceRequest::decode(&framed[5..]).expect("valid protobuf");
        assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), 40);
        // Small requests too (a one-byte length).
        let start = export_request_into(&mut buf, &batch[..0], &resource, Framing::None);
        assert_eq!(&buf[start..], export_request(&[], &resource).as_slice());
    }

    #[test]
    fn a_length_guessed_wrong_either_way_is_still_written_canonically() {
        for len in [0, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            for guess in 1..=3 {
                let mut w = Writer {
                    buf: vec![0xEE], // something before the field
                };
                w.message_sized(9, guess, |w| w.raw(&vec![7; len]));
                w.raw(&[0xFF]); // and after it
                let mut expected = vec![0xEE];
                encode_key(9, WireType::LengthDelimited, &mut expected);
                encode_varint(len as u64, &mut expected);
                expected.extend(std::iter::repeat_n(7, len));
                expected.push(0xFF);
                assert!(w.buf == expected, "length {len}, guess {guess}");
            }
        }
    }

    #[test]
    fn an_empty_batch_is_one_resource_without_spans() {
        let resource = Resource::builder_empty().build();
        let ours = ExportTraceServiceRequest::decode(
            export_request(&[], &EncodedResource::new(&resource)).as_slice(),
        )
        .expect("valid protobuf");
        assert_eq!(ours.resource_spans.len(), 1);
        assert!(ours.resource_spans[0].scope_spans.is_empty());
    }
}
