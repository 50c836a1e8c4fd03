//! Trace context in and out, always through OpenTelemetry's W3C propagator (never a
//! hand-written `traceparent` parser): from the HTTP headers of an incoming request, into the
//! engine request's carrier, and out of that carrier in the engine core.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use wayfinder_core::Carrier;

use crate::names::{CHOICE_INDEX_KEY, REQUEST_ID_KEY, SAMPLED_KEY};

/// Reads HTTP headers; `http::HeaderMap` matches names case-insensitively.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Reads and writes a carrier map.
struct MapCarrier<'a>(&'a mut HashMap<String, String>);

impl Injector for MapCarrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing (W3C: the same as none); leaving it out spares
        // every traced request two strings.
        if !value.is_empty() {
            self.0.insert(key.to_ascii_lowercase(), value);
        }
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Whether `headers` carry a `traceparent` (whatever its validity).
pub fn has_trace_headers(headers: &http::HeaderMap) -> bool {
    headers.contains_key("traceparent")
}

/// The remote parent named by `traceparent` / `tracestate`, if they hold a valid one. Never
/// the ambient context: a request without headers has no parent.
pub fn extract_headers(headers: &http::HeaderMap) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A carrier for the engine requests of API request `request_id`: the W3C context of `span`,
/// the sampling decision and the request id.
pub fn inject(span: &SpanContext, request_id: &str) -> Carrier {
    let mut carrier = Carrier::with_capacity(4);
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut MapCarrier(&mut carrier));
    carrier.insert(SAMPLED_KEY.to_owned(), "1".to_owned());
    carrier.insert(REQUEST_ID_KEY.to_owned(), request_id.to_owned());
    carrier
}

/// Marks the carrier of one engine request as the API request's choice `index`.
pub fn set_choice_index(carrier: &mut Carrier, index: u32) {
    carrier.insert(CHOICE_INDEX_KEY.to_owned(), index.to_string());
}

/// The choice index the API layer put in the carrier; 0 when none (one choice) or unreadable.
pub fn choice_index(carrier: &Carrier) -> u32 {
    carrier
        .get(CHOICE_INDEX_KEY)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The API layer's request id, if the carrier has one.
pub fn request_id(carrier: &Carrier) -> Option<&str> {
    carrier.get(REQUEST_ID_KEY).map(String::as_str)
}

/// Whether the API layer sampled this request in.
pub fn is_sampled(carrier: &Carrier) -> bool {
    MapExtractor(carrier).get(SAMPLED_KEY) == Some("1")
}

/// The parent context a carrier holds, if it holds a valid one.
pub fn extract_carrier(carrier: &Carrier) -> Option<SpanContext> {
    let cx = TraceContextPropagator::new().extract(&MapExtractor(carrier));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_are_read_whatever_their_case() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::HeaderName::from_static("traceparent"),
            http::HeaderValue::from_static(TRACEPARENT),
        );
        // `HeaderMap` normalises names: `TraceParent` on the wire is `traceparent` here.
        let parsed: http::HeaderName = "TraceParent".parse().expect("header name");
        assert_eq!(parsed, "traceparent");
        let sc = extract_headers(&headers).expect("a parent");
        assert_eq!(
            sc.trace_id(),
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex")
        );
        assert!(sc.is_sampled());
        assert!(sc.is_remote());
    }

    #[test]
    fn malformed_or_missing_headers_give_no_parent() {
        let mut headers = http::HeaderMap::new();
        assert!(extract_headers(&headers).is_none());
        headers.insert(
            http::HeaderName::from_static("traceparent"),
            http::HeaderValue::from_static("00-zz-00f067aa0ba902b7-01"),
        );
        assert!(has_trace_headers(&headers));
        assert!(extract_headers(&headers).is_none());
    }

    #[test]
    fn a_carrier_round_trips_the_context_and_the_decision() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
            SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        let carrier = inject(&sc, "chatcmpl-1");
        assert_eq!(request_id(&carrier), Some("chatcmpl-1"));
        assert_eq!(
            carrier.get("traceparent").map(String::as_str),
            Some(TRACEPARENT)
        );
        assert!(is_sampled(&carrier));
        let back = extract_carrier(&carrier).expect("a parent");
        assert_eq!(back.trace_id(), sc.trace_id());
        assert_eq!(back.span_id(), sc.span_id());
        assert!(!is_sampled(&Carrier::new()));
        assert!(extract_carrier(&Carrier::new()).is_none());
        // An empty trace state is left out; a real one travels.
        assert!(!carrier.contains_key("tracestate"), "{carrier:?}");
        let state: TraceState = "vendor=v1".parse().expect("trace state");
        let sc = SpanContext::new(
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags(),
            false,
            state.clone(),
        );
        let back = extract_carrier(&inject(&sc, "chatcmpl-2")).expect("a parent");
        assert_eq!(back.trace_state(), &state);
    }
}
