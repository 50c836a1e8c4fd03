//! Reading spans in the journey tests: lookups by name and attribute, and the invariants every
//! test checks (only the contract's scopes; one `llm_request` per request; exactly one of
//! DEPARTED/ABORTED; `llm_core` a child of `llm_request`).

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry::{KeyValue, Value};
use wayfinder_trace::SpanData;
use wayfinder_trace::names::{self, attr, scope};

use crate::common::TestServer;

/// Waits until the engine is idle and at least `n` spans were exported; returns them all.
pub async fn spans(server: &TestServer, n: usize) -> Vec<SpanData> {
    server.wait_idle().await;
    let telemetry = server.telemetry.as_ref().expect("tracing on");
    let exporter = server.spans.as_ref().expect("an in-memory exporter");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        telemetry.force_flush();
        let spans = exporter.get_finished_spans().expect("spans");
        if spans.len() >= n || Instant::now() > deadline {
            check_invariants(&spans);
            return spans;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Spans named `name`.
pub fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The one span named `name`.
pub fn one<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    let found = named(spans, name);
    assert_eq!(found.len(), 1, "expected one {name}, got {}", found.len());
    found[0]
}

/// An attribute of a span.
pub fn attr_of<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    find(&span.attributes, key)
}

pub fn find<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

pub fn int(span: &SpanData, key: &str) -> i64 {
    match attr_of(span, key) {
        Some(Value::I64(v)) => *v,
        other => panic!("{key} is not an int on {}: {other:?}", span.name),
    }
}

pub fn float(span: &SpanData, key: &str) -> f64 {
    match attr_of(span, key) {
        Some(Value::F64(v)) => *v,
        other => panic!("{key} is not a double on {}: {other:?}", span.name),
    }
}

pub fn string(span: &SpanData, key: &str) -> String {
    match attr_of(span, key) {
        Some(Value::String(v)) => v.to_string(),
        other => panic!("{key} is not a string on {}: {other:?}", span.name),
    }
}

/// The names of a span's events, in order.
pub fn event_names(span: &SpanData) -> Vec<String> {
    span.events
        .events
        .iter()
        .map(|e| e.name.to_string())
        .collect()
}

/// An event's attribute.
pub fn event_attr<'a>(event: &'a opentelemetry::trace::Event, key: &str) -> &'a Value {
    find(&event.attributes, key).unwrap_or_else(|| panic!("{} has no {key}", event.name))
}

pub fn event_int(event: &opentelemetry::trace::Event, key: &str) -> i64 {
    match event_attr(event, key) {
        Value::I64(v) => *v,
        other => panic!("{key} on {} is not an int: {other:?}", event.name),
    }
}

pub fn event_str(event: &opentelemetry::trace::Event, key: &str) -> String {
    match event_attr(event, key) {
        Value::String(v) => v.to_string(),
        other => panic!("{key} on {} is not a string: {other:?}", event.name),
    }
}

/// The `llm_core` spans whose parent is `request`.
pub fn children<'a>(spans: &'a [SpanData], request: &SpanData) -> Vec<&'a SpanData> {
    named(spans, names::SPAN_CORE)
        .into_iter()
        .filter(|c| c.parent_span_id == request.span_context.span_id())
        .collect()
}

/// What must hold of any set of exported spans.
pub fn check_invariants(spans: &[SpanData]) {
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for s in spans {
        let scope_name = s.instrumentation_scope.name();
        assert!(
            scope::ALL.contains(&scope_name),
            "span {} has a scope outside the contract: {scope_name}",
            s.name
        );
        match s.name.as_ref() {
            names::SPAN_REQUEST => {
                assert_eq!(scope_name, scope::API);
                assert_eq!(s.span_kind, SpanKind::Server);
                *per_request.entry(string(s, attr::REQUEST_ID)).or_default() += 1;
                let endings = event_names(s)
                    .iter()
                    .filter(|n| *n == "api.DEPARTED" || *n == "api.ABORTED")
                    .count();
                assert_eq!(
                    endings,
                    1,
                    "exactly one of DEPARTED/ABORTED: {:?}",
                    event_names(s)
                );
                for e in &s.events.events {
                    assert!(matches!(
                        event_attr(e, attr::EVENT_TS_MONOTONIC),
                        Value::F64(_)
                    ));
                }
            }
            names::SPAN_CORE => {
                assert_eq!(scope_name, scope::SCHEDULER);
                assert_eq!(s.span_kind, SpanKind::Internal);
                assert_ne!(
                    s.parent_span_id,
                    SpanId::INVALID,
                    "llm_core is never a root"
                );
                let parent = spans
                    .iter()
                    .find(|p| p.span_context.span_id() == s.parent_span_id);
                if let Some(parent) = parent {
                    assert_eq!(parent.name, names::SPAN_REQUEST);
                    assert_eq!(parent.span_context.trace_id(), s.span_context.trace_id());
                    assert_eq!(
                        string(parent, attr::REQUEST_ID),
                        string(s, attr::REQUEST_ID)
                    );
                }
                check_journey_events(s);
            }
            names::SPAN_STEP => assert_eq!(scope_name, scope::STEP),
            other => panic!("unexpected span {other}"),
        }
    }
    for (id, n) in per_request {
        assert_eq!(n, 1, "{n} llm_request spans for {id}");
    }
}

/// The journey events of one `llm_core`: the contract's order, attributes and counts.
fn check_journey_events(span: &SpanData) {
    let events = &span.events.events;
    let names: Vec<String> = event_names(span);
    assert_eq!(
        names.first().map(String::as_str),
        Some("journey.QUEUED"),
        "{names:?}"
    );
    assert_eq!(
        names.last().map(String::as_str),
        Some("journey.FINISHED"),
        "{names:?}"
    );
    assert_eq!(names.iter().filter(|n| *n == "journey.QUEUED").count(), 1);
    assert_eq!(names.iter().filter(|n| *n == "journey.FINISHED").count(), 1);
    assert!(names.iter().filter(|n| *n == "journey.FIRST_TOKEN").count() <= 1);
    let mut last_ts = f64::MIN;
    let mut last_prefill = 0;
    for e in events {
        for key in [
            attr::EVENT_TYPE,
            attr::TS_MONOTONIC,
            attr::TS_MONOTONIC_NS,
            attr::SCHEDULER_STEP,
            attr::PHASE,
            attr::PREFILL_DONE_TOKENS,
            attr::PREFILL_TOTAL_TOKENS,
            attr::DECODE_DONE_TOKENS,
            attr::DECODE_MAX_TOKENS,
            attr::NUM_PREEMPTIONS,
        ] {
            event_attr(e, key);
        }
        assert_eq!(
            format!("journey.{}", event_str(e, attr::EVENT_TYPE)),
            e.name
        );
        let Value::F64(ts) = event_attr(e, attr::TS_MONOTONIC) else {
            panic!("ts.monotonic is a double");
        };
        assert_eq!(
            (ts * 1e9).round() as i64,
            event_int(e, attr::TS_MONOTONIC_NS)
        );
        assert!(*ts >= last_ts, "events in time order");
        last_ts = *ts;
        let prefill = event_int(e, attr::PREFILL_DONE_TOKENS);
        assert!(
            prefill >= last_prefill,
            "prefill.done_tokens never goes down"
        );
        last_prefill = prefill;
        assert!(
            ["WAITING", "PREFILL", "DECODE"].contains(&event_str(e, attr::PHASE).as_str()),
            "phase"
        );
    }
    let preempted = names.iter().filter(|n| *n == "journey.PREEMPTED").count();
    let scheduled = names.iter().filter(|n| *n == "journey.SCHEDULED").count();
    if scheduled > 0 {
        assert!(
            scheduled == preempted + 1 || scheduled == preempted,
            "{names:?}"
        );
    }
}
