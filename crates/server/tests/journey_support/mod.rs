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

use axum::body::Body;
use axum::http::Request;
use serde_json::{Value as Json, json};
use wayfinder_trace::TracingConfig;

use crate::common::{MODEL, Options, TestServer};

pub const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Where the engine runs: the journey tests run in both modes with the same assertions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    InProcess,
    EngineProcess,
}

/// A test server with its engine where `mode` says.
pub async fn server(mode: Mode, options: Options) -> TestServer {
    TestServer::start(&Options {
        engine_process: mode == Mode::EngineProcess,
        ..options
    })
    .await
}

/// The same, with journey tracing on.
pub async fn traced(mode: Mode, options: Options) -> TestServer {
    server(
        mode,
        Options {
            tracing: Some(TracingConfig::default()),
            ..options
        },
    )
    .await
}

/// A chat request body with `extra` fields.
pub fn chat(extra: &Json) -> Json {
    let mut body = json!({
        "model": MODEL,
        "messages": [{"role": "user", "content": "tell me about the sea"}],
    });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

/// A POST with a JSON body and extra headers.
pub fn post_with(path: &str, body: &Json, headers: &[(&str, &str)]) -> Request<Body> {
    let mut r = Request::post(path).header("content-type", "application/json");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Body::from(body.to_string())).expect("request")
}

/// Waits until the engine is idle and at least `n` spans were exported; returns them all —
/// from the in-memory exporter, or (engine in a child process) from the OTLP receiver both
/// processes export to, after checking that each span came from its own process.
pub async fn spans(server: &TestServer, n: usize) -> Vec<SpanData> {
    server.wait_idle().await;
    let telemetry = server.telemetry.as_ref().expect("tracing on");
    if let Some(receiver) = &server.receiver {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let t = telemetry.clone();
            tokio::task::spawn_blocking(move || t.force_flush())
                .await
                .expect("flush");
            let mut received = receiver.spans();
            if received.len() >= n || Instant::now() > deadline {
                // The child exports on its own schedule (every 50 ms): wait for a quiet spell
                // so that nothing it still holds is missed.
                loop {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let now = receiver.spans();
                    if now.len() == received.len() {
                        break;
                    }
                    received = now;
                }
                check_processes(server, &received);
                let spans: Vec<SpanData> = received.iter().map(from_wire).collect();
                check_invariants(&spans);
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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

/// With the engine in a child process: API spans come from this process (role `api`), engine
/// spans from the child (role `engine`), each process with its own resource.
fn check_processes(server: &TestServer, received: &[wayfinder_testkit::ReceivedSpan]) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Wire;
    let first_child = server.engine_pid.expect("an engine child");
    assert_ne!(first_child, std::process::id());
    for r in received {
        let pid = match r.resource_attribute("process.pid") {
            Some(Wire::IntValue(p)) => *p,
            other => panic!("{} has no process.pid: {other:?}", r.name()),
        };
        let role = if r.scope == scope::API {
            assert_eq!(
                pid,
                i64::from(std::process::id()),
                "{} from this process",
                r.name()
            );
            "api"
        } else {
            // The first child, or one the supervisor started after it.
            assert_ne!(
                pid,
                i64::from(std::process::id()),
                "{} from the child",
                r.name()
            );
            "engine"
        };
        assert!(
            matches!(r.resource_attribute(attr::PROCESS_ROLE), Some(Wire::StringValue(v)) if v == role),
            "{} has role {role}",
            r.name()
        );
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

/// A span received over OTLP, as the SDK's `SpanData`, so that one set of assertions reads
/// spans from the in-memory exporter and from the wire alike.
pub fn from_wire(r: &wayfinder_testkit::ReceivedSpan) -> SpanData {
    use std::time::{Duration, UNIX_EPOCH};

    use opentelemetry::InstrumentationScope;
    use opentelemetry::trace::{Event, Link, SpanContext, Status, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};

    let span = &r.span;
    let trace_id = |b: &[u8]| TraceId::from_bytes(b.try_into().unwrap_or([0; 16]));
    let span_id = |b: &[u8]| SpanId::from_bytes(b.try_into().unwrap_or([0; 8]));
    let time = |ns: u64| UNIX_EPOCH + Duration::from_nanos(ns);
    let context = |t: &[u8], s: &[u8], state: &str| {
        SpanContext::new(
            trace_id(t),
            span_id(s),
            TraceFlags::SAMPLED,
            false,
            state.parse::<TraceState>().unwrap_or_default(),
        )
    };
    let mut events = SpanEvents::default();
    events.events = span
        .events
        .iter()
        .map(|e| {
            Event::new(
                e.name.clone(),
                time(e.time_unix_nano),
                key_values(&e.attributes),
                0,
            )
        })
        .collect();
    let mut links = SpanLinks::default();
    links.links = span
        .links
        .iter()
        .map(|l| {
            Link::new(
                context(&l.trace_id, &l.span_id, &l.trace_state),
                Vec::new(),
                0,
            )
        })
        .collect();
    // OTLP span flags: bit 8 says whether bit 9 (the parent is remote) is known.
    const IS_REMOTE: u32 = 0x200;
    SpanData {
        span_context: context(&span.trace_id, &span.span_id, &span.trace_state),
        parent_span_id: span_id(&span.parent_span_id),
        parent_span_is_remote: span.flags & IS_REMOTE != 0,
        span_kind: match span.kind {
            2 => SpanKind::Server,
            3 => SpanKind::Client,
            4 => SpanKind::Producer,
            5 => SpanKind::Consumer,
            _ => SpanKind::Internal,
        },
        name: span.name.clone().into(),
        start_time: time(span.start_time_unix_nano),
        end_time: time(span.end_time_unix_nano),
        attributes: key_values(&span.attributes),
        dropped_attributes_count: 0,
        events,
        links,
        status: match &span.status {
            Some(s) if s.code == 2 => Status::error(s.message.clone()),
            Some(s) if s.code == 1 => Status::Ok,
            _ => Status::Unset,
        },
        instrumentation_scope: InstrumentationScope::builder(r.scope.clone()).build(),
    }
}

fn key_values(attrs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> Vec<KeyValue> {
    use opentelemetry::{Array, StringValue};
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Wire;
    attrs
        .iter()
        .filter_map(|kv| {
            let value = match kv.value.as_ref()?.value.as_ref()? {
                Wire::StringValue(s) => Value::String(s.clone().into()),
                Wire::BoolValue(b) => Value::Bool(*b),
                Wire::IntValue(i) => Value::I64(*i),
                Wire::DoubleValue(d) => Value::F64(*d),
                Wire::ArrayValue(a) => Value::Array(Array::String(
                    a.values
                        .iter()
                        .filter_map(|v| match v.value.as_ref()? {
                            Wire::StringValue(s) => Some(StringValue::from(s.clone())),
                            _ => None,
                        })
                        .collect(),
                )),
                _ => return None,
            };
            Some(KeyValue::new(kv.key.clone(), value))
        })
        .collect()
}
