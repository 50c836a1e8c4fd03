//! The journey contract, end to end: the API's `llm_request` and the engine's `llm_core`
//! spans for every path a request can take, each scenario run twice — with the engine in
//! process (spans from the SDK's in-memory exporter, through the real batch processor) and in
//! a child process (spans from both processes over OTLP to a receiver in the test).

mod common;
mod journey_support;

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, Status, TraceId};
use serde_json::json;
use tower::ServiceExt;
use wayfinder_server::app;
use wayfinder_trace::names::{SAMPLED_KEY, SPAN_CORE, SPAN_REQUEST, SPAN_STEP, attr};
use wayfinder_trace::{StepTracingConfig, TracingConfig};

use common::{MODEL, Options};
use journey_support::{
    CLIENT_SPAN, CLIENT_TRACE, Mode, attr_of, chat, children, event_int, event_names, event_str,
    float, int, named, one, post_with, server, spans, string, traced,
};

/// Runs each named scenario twice: engine in process, and engine in a child process.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::InProcess).await;
                }
            )*
        }
        mod engine_process {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Mode::EngineProcess).await;
                }
            )*
        }
    };
}

in_both_modes!(
    a_non_streaming_chat_request_has_both_spans_with_every_event_and_attribute,
    a_streaming_request_follows_the_clients_traceparent_whatever_the_header_case,
    n_choices_make_one_request_span_with_one_core_span_per_choice,
    a_client_disconnect_aborts_both_spans,
    rejected_requests_leave_an_aborted_request_span_and_no_core_span,
    overload_and_engine_errors_are_aborted_with_their_reason,
    a_preempted_request_reads_preempted_then_resume_and_its_prefill_never_goes_down,
    a_sampled_out_request_has_no_spans_and_no_tracing_state,
    sampled_steps_are_short_spans_linked_to_their_requests,
    a_request_refused_for_its_api_key_still_has_an_aborted_request_span,
    a_choice_ended_by_a_stop_string_still_has_the_engines_latency,
    a_request_past_the_request_timeout_is_aborted_with_reason_timeout,
    numbers_are_recorded_exactly_as_the_client_sent_them,
    each_core_span_names_its_choice_index,
    a_stop_string_finishes_the_core_span_as_stopped,
    every_response_to_a_traced_request_names_its_request_span,
);

/// The engine-core child of the engine-process mode (see `common::engine_child_main`).
#[test]
#[ignore = "run by the engine-process tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

fn api_events(span: &wayfinder_trace::SpanData) -> Vec<String> {
    event_names(span)
}

async fn a_non_streaming_chat_request_has_both_spans_with_every_event_and_attribute(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 5, "temperature": 0, "seed": 11})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let body = reply.json();
    let spans = spans(&server, 2).await;
    assert_eq!(spans.len(), 2);
    let request = one(&spans, SPAN_REQUEST);
    let core = one(&spans, SPAN_CORE);

    assert_eq!(
        request.parent_span_id,
        SpanId::INVALID,
        "no traceparent: a new root"
    );
    assert_eq!(core.parent_span_id, request.span_context.span_id());
    assert_eq!(
        core.span_context.trace_id(),
        request.span_context.trace_id()
    );
    assert_eq!(
        api_events(request),
        [
            "api.ARRIVED",
            "api.HANDOFF_TO_CORE",
            "api.FIRST_RESPONSE_FROM_CORE",
            "api.DEPARTED"
        ]
    );
    assert_eq!(
        event_names(core),
        [
            "journey.QUEUED",
            "journey.SCHEDULED",
            "journey.FIRST_TOKEN",
            "journey.FINISHED"
        ]
    );
    assert_eq!(request.status, Status::Unset);

    let id = body["id"].as_str().expect("id");
    assert_eq!(string(request, attr::REQUEST_ID), id);
    assert_eq!(string(request, attr::RESPONSE_ID), id);
    assert_eq!(string(core, attr::REQUEST_ID), id);
    assert_eq!(
        float(request, attr::TEMPERATURE),
        0.0,
        "temperature 0 is recorded"
    );
    assert_eq!(float(request, attr::TOP_P), 1.0);
    assert_eq!(int(request, attr::MAX_TOKENS), 5);
    assert_eq!(int(request, attr::N), 1);
    assert_eq!(int(request, attr::SEED), 11);
    assert_eq!(attr_of(request, attr::STREAM), Some(&Value::Bool(false)));
    assert_eq!(string(request, attr::OPERATION_NAME), "chat");
    assert_eq!(string(request, attr::PROVIDER_NAME), "wayfinder");
    assert_eq!(string(request, attr::REQUEST_MODEL), MODEL);
    assert_eq!(string(request, attr::RESPONSE_MODEL), MODEL);
    let prompt_tokens = body["usage"]["prompt_tokens"].as_i64().expect("usage");
    assert_eq!(int(request, attr::PROMPT_TOKENS), prompt_tokens);
    assert_eq!(int(request, attr::INPUT_TOKENS), prompt_tokens);
    assert_eq!(int(request, attr::COMPLETION_TOKENS), 5);
    assert_eq!(int(request, attr::OUTPUT_TOKENS), 5);
    assert_eq!(
        attr_of(request, attr::FINISH_REASONS).map(ToString::to_string),
        Some("[\"length\"]".to_owned())
    );
    for key in [
        attr::TIME_IN_QUEUE,
        attr::TIME_TO_FIRST_TOKEN,
        attr::E2E,
        attr::TIME_IN_MODEL_PREFILL,
        attr::TIME_IN_MODEL_DECODE,
        attr::TIME_IN_MODEL_INFERENCE,
    ] {
        assert!(float(request, key) > 0.0, "{key}");
    }
    assert!(float(request, attr::TIME_TO_FIRST_TOKEN) <= float(request, attr::E2E));

    let events = &core.events.events;
    assert_eq!(event_str(&events[1], attr::SCHEDULE_KIND), "FIRST");
    assert_eq!(event_str(&events[3], attr::FINISH_STATUS), "length");
    assert_eq!(event_str(&events[0], attr::PHASE), "WAITING");
    let finished = &events[3];
    assert_eq!(
        event_int(finished, attr::PREFILL_TOTAL_TOKENS),
        prompt_tokens
    );
    assert_eq!(
        event_int(finished, attr::PREFILL_DONE_TOKENS),
        prompt_tokens
    );
    assert_eq!(event_int(finished, attr::DECODE_DONE_TOKENS), 5);
    assert_eq!(event_int(finished, attr::DECODE_MAX_TOKENS), 5);
    assert_eq!(event_int(finished, attr::NUM_PREEMPTIONS), 0);
    assert!(event_int(finished, attr::SCHEDULER_STEP) >= 5);
    // The engine's events happen inside the API span, in wall-clock time too.
    assert!(core.start_time >= request.start_time && core.end_time <= request.end_time);
}

async fn a_streaming_request_follows_the_clients_traceparent_whatever_the_header_case(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = server
        .call(post_with(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "once upon", "max_tokens": 4, "stream": true}),
            &[("TraceParent", &traceparent), ("tracestate", "vendor=1")],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.sse_data().last().map(String::as_str), Some("[DONE]"));
    let spans = spans(&server, 2).await;
    let request = one(&spans, SPAN_REQUEST);
    let core = one(&spans, SPAN_CORE);
    let trace = TraceId::from_hex(CLIENT_TRACE).expect("hex");
    assert_eq!(request.span_context.trace_id(), trace);
    assert_eq!(
        request.parent_span_id,
        SpanId::from_hex(CLIENT_SPAN).expect("hex")
    );
    assert!(request.parent_span_is_remote);
    assert_eq!(core.span_context.trace_id(), trace);
    assert_eq!(core.parent_span_id, request.span_context.span_id());
    assert_eq!(request.span_context.trace_state().get("vendor"), Some("1"));
    assert_eq!(
        api_events(request).last().map(String::as_str),
        Some("api.DEPARTED")
    );
    assert_eq!(string(request, attr::OPERATION_NAME), "text_completion");
    assert_eq!(attr_of(request, attr::STREAM), Some(&Value::Bool(true)));
    assert_eq!(
        int(request, attr::COMPLETION_TOKENS),
        4,
        "counted while streaming"
    );
}

async fn n_choices_make_one_request_span_with_one_core_span_per_choice(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    for stream in [false, true] {
        let reply = server
            .post(
                "/v1/chat/completions",
                &chat(&json!({"max_tokens": 3, "n": 2, "stream": stream,
                              "stream_options": {"include_usage": true}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    let spans = spans(&server, 6).await;
    let requests = named(&spans, SPAN_REQUEST);
    assert_eq!(requests.len(), 2);
    for request in requests {
        assert_eq!(children(&spans, request).len(), 2);
        assert_eq!(int(request, attr::N), 2);
        assert_eq!(
            int(request, attr::COMPLETION_TOKENS),
            6,
            "summed over choices"
        );
        assert_eq!(
            attr_of(request, attr::FINISH_REASONS).map(ToString::to_string),
            Some("[\"length\",\"length\"]".to_owned())
        );
    }
}

async fn a_client_disconnect_aborts_both_spans(mode: Mode) {
    let server = traced(
        mode,
        Options {
            step_delay: Duration::from_millis(20),
            ..Options::default()
        },
    )
    .await;
    let response = app(server.state.clone())
        .oneshot(common::post(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 200, "stream": true})),
        ))
        .await
        .expect("response");
    let mut body = response.into_body().into_data_stream();
    body.next().await.expect("the first chunk").expect("bytes");
    body.next().await.expect("a token chunk").expect("bytes");
    drop(body);
    let spans = spans(&server, 2).await;
    let request = one(&spans, SPAN_REQUEST);
    let aborted = request.events.events.last().expect("events");
    assert_eq!(aborted.name, "api.ABORTED");
    assert_eq!(event_str(aborted, attr::REASON), "client_disconnect");
    assert!(matches!(request.status, Status::Error { .. }));
    assert_eq!(string(request, attr::ERROR_TYPE), "client_disconnect");
    let core = one(&spans, SPAN_CORE);
    let finished = core.events.events.last().expect("events");
    assert_eq!(event_str(finished, attr::FINISH_STATUS), "aborted");
}

async fn rejected_requests_leave_an_aborted_request_span_and_no_core_span(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let bad_json = server
        .call(post_with(
            "/v1/chat/completions",
            &json!("not an object"),
            &[],
        ))
        .await;
    assert_eq!(bad_json.status, StatusCode::BAD_REQUEST);
    let bad_model = server
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .await;
    assert_eq!(bad_model.status, StatusCode::NOT_FOUND);
    let too_long = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "x", "max_tokens": 100000}),
        )
        .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    let spans = spans(&server, 3).await;
    assert!(named(&spans, SPAN_CORE).is_empty());
    let requests = named(&spans, SPAN_REQUEST);
    assert_eq!(requests.len(), 3);
    let mut error_types: Vec<String> = Vec::new();
    for r in requests {
        assert_eq!(api_events(r), ["api.ARRIVED", "api.ABORTED"]);
        let aborted = &r.events.events[1];
        assert_eq!(event_str(aborted, attr::REASON), "validation_error");
        assert!(!event_str(aborted, attr::ERROR).is_empty());
        assert!(matches!(r.status, Status::Error { .. }));
        assert!(
            string(r, attr::REQUEST_ID).starts_with("c"),
            "the id is known early"
        );
        error_types.push(string(r, attr::ERROR_TYPE));
    }
    error_types.sort();
    assert_eq!(error_types, ["400", "400", "404"]);
}

async fn overload_and_engine_errors_are_aborted_with_their_reason(mode: Mode) {
    let server = traced(
        mode,
        Options {
            max_num_seqs: 1,
            max_waiting_requests: 0,
            step_delay: Duration::from_millis(10),
            fail_on_steps: vec![3],
            ..Options::default()
        },
    )
    .await;
    let first = tokio::spawn({
        let server = server.clone();
        async move {
            server
                .post(
                    "/v1/completions",
                    &json!({"model": MODEL, "prompt": "a", "max_tokens": 8}),
                )
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "b", "max_tokens": 8}),
        )
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    let first = first.await.expect("task");
    assert_eq!(
        first.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        first.text
    );

    let spans = spans(&server, 3).await;
    let reasons: Vec<String> = named(&spans, SPAN_REQUEST)
        .iter()
        .map(|r| {
            let last = r.events.events.last().expect("events");
            assert_eq!(last.name, "api.ABORTED");
            event_str(last, attr::REASON)
        })
        .collect();
    assert!(reasons.contains(&"overloaded".to_owned()), "{reasons:?}");
    assert!(
        reasons.contains(&"generation_error".to_owned()),
        "{reasons:?}"
    );
    let core = one(&spans, SPAN_CORE);
    let finished = core.events.events.last().expect("events");
    assert_eq!(event_str(finished, attr::FINISH_STATUS), "error");
}

async fn a_preempted_request_reads_preempted_then_resume_and_its_prefill_never_goes_down(
    mode: Mode,
) {
    // Six blocks of 16 tokens for two requests that each grow to four blocks.
    let server = traced(
        mode,
        Options {
            num_blocks: 6,
            max_model_len: 96,
            // Slow steps, so that the requests surely overlap.
            step_delay: Duration::from_millis(2),
            ..Options::default()
        },
    )
    .await;
    let long = |seed: u64| {
        json!({"model": MODEL, "prompt": "the sea and the sky and the long road home",
               "max_tokens": 50, "seed": seed, "temperature": 1.0})
    };
    let replies = futures_util::future::join_all((0..3).map(|seed| {
        let (server, body) = (server.clone(), long(seed));
        async move { server.post("/v1/completions", &body).await }
    }))
    .await;
    assert!(replies.iter().all(|r| r.status == StatusCode::OK));
    let spans = spans(&server, 6).await;
    let cores = named(&spans, SPAN_CORE);
    let preempted: Vec<_> = cores
        .iter()
        .filter(|c| event_names(c).contains(&"journey.PREEMPTED".to_owned()))
        .collect();
    assert!(
        !preempted.is_empty(),
        "the tiny KV pool forces a preemption"
    );
    for core in preempted {
        let events = &core.events.events;
        let at = events
            .iter()
            .position(|e| e.name == "journey.PREEMPTED")
            .expect("preempted");
        assert_eq!(
            event_str(&events[at], attr::PREEMPT_REASON),
            "kv_cache_full"
        );
        assert_eq!(events[at + 1].name, "journey.SCHEDULED");
        assert_eq!(event_str(&events[at + 1], attr::SCHEDULE_KIND), "RESUME");
        let last = events.last().expect("finished");
        assert!(event_int(last, attr::NUM_PREEMPTIONS) >= 1);
        // `check_invariants` (in `spans`) already asserted prefill.done_tokens is monotonic.
    }
}

async fn a_sampled_out_request_has_no_spans_and_no_tracing_state(mode: Mode) {
    let server = server(
        mode,
        Options {
            tracing: Some(TracingConfig {
                sample_rate: 0.0,
                ..TracingConfig::default()
            }),
            // The recorder sits beside the engine: in process only.
            record_journey: mode == Mode::InProcess,
            ..Options::default()
        },
    )
    .await;
    let reply = server
        .post("/v1/chat/completions", &chat(&json!({"max_tokens": 2})))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The client's unsampled decision is followed too…
    let unsampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-00");
    let reply = server
        .call(post_with(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 2})),
            &[("traceparent", &unsampled)],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    server.wait_idle().await;
    if let Some(journey) = &server.journey {
        assert!(
            journey.events().iter().all(|e| e.carrier.is_empty()),
            "nothing injected into the engine requests"
        );
    }
    // …and so is a sampled one, even at rate 0.
    let sampled = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let reply = server
        .call(post_with(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 2})),
            &[("traceparent", &sampled)],
        ))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let spans = spans(&server, 2).await;
    assert_eq!(spans.len(), 2, "only the request with a sampled parent");
    if let Some(journey) = &server.journey {
        assert!(
            journey
                .events()
                .iter()
                .any(|e| e.carrier.contains_key(SAMPLED_KEY))
        );
    }
}

async fn sampled_steps_are_short_spans_linked_to_their_requests(mode: Mode) {
    let server = server(
        mode,
        Options {
            tracing: Some(TracingConfig {
                step: StepTracingConfig {
                    enabled: true,
                    sample_rate: 1.0,
                    rich_subsample_rate: 1.0,
                },
                ..TracingConfig::default()
            }),
            ..Options::default()
        },
    )
    .await;
    let (chat_body, completion_body) = (
        chat(&json!({"max_tokens": 3})),
        json!({"model": MODEL, "prompt": "hi", "max_tokens": 3}),
    );
    let (a, b) = tokio::join!(
        server.post("/v1/chat/completions", &chat_body),
        server.post("/v1/completions", &completion_body)
    );
    assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
    let spans = spans(&server, 5).await;
    let cores: Vec<SpanId> = named(&spans, SPAN_CORE)
        .iter()
        .map(|c| c.span_context.span_id())
        .collect();
    let steps = named(&spans, SPAN_STEP);
    assert!(steps.len() >= 3, "one span per step at rate 1");
    for step in &steps {
        assert_eq!(step.parent_span_id, SpanId::INVALID);
        for key in [
            attr::STEP_ID,
            attr::STEP_DURATION_US,
            attr::QUEUE_RUNNING_DEPTH,
            attr::QUEUE_WAITING_DEPTH,
            attr::BATCH_NUM_PREFILL_REQS,
            attr::BATCH_NUM_DECODE_REQS,
            attr::BATCH_SCHEDULED_TOKENS,
            attr::BATCH_PREFILL_TOKENS,
            attr::BATCH_DECODE_TOKENS,
            attr::BATCH_NUM_FINISHED,
            attr::BATCH_NUM_PREEMPTED,
            attr::KV_BLOCKS_TOTAL,
            attr::KV_BLOCKS_FREE,
        ] {
            int(step, key);
        }
        let usage = float(step, attr::KV_USAGE_RATIO);
        assert!((0.0..=1.0).contains(&usage));
        assert_eq!(
            int(step, attr::BATCH_SCHEDULED_TOKENS),
            int(step, attr::BATCH_PREFILL_TOKENS) + int(step, attr::BATCH_DECODE_TOKENS)
        );
        let linked: Vec<SpanId> = step
            .links
            .links
            .iter()
            .map(|l| l.span_context.span_id())
            .collect();
        assert!(!linked.is_empty());
        assert!(
            linked.iter().all(|id| cores.contains(id)),
            "links point at llm_core spans"
        );
        let snapshots = step
            .events
            .events
            .iter()
            .filter(|e| e.name == "step.REQUEST_SNAPSHOT")
            .count();
        assert_eq!(
            snapshots,
            linked.len(),
            "a rich step snapshots each request"
        );
    }
    let finished: i64 = steps.iter().map(|s| int(s, attr::BATCH_NUM_FINISHED)).sum();
    assert_eq!(finished, 2);
}

async fn a_request_refused_for_its_api_key_still_has_an_aborted_request_span(mode: Mode) {
    let server = traced(
        mode,
        Options {
            api_key: Some("sesame".into()),
            ..Options::default()
        },
    )
    .await;
    let reply = server
        .post("/v1/chat/completions", &chat(&json!({"max_tokens": 2})))
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let spans = spans(&server, 1).await;
    let request = one(&spans, SPAN_REQUEST);
    assert_eq!(api_events(request), ["api.ARRIVED", "api.ABORTED"]);
    assert_eq!(string(request, attr::ERROR_TYPE), "401");
    assert!(named(&spans, SPAN_CORE).is_empty());
}

async fn a_choice_ended_by_a_stop_string_still_has_the_engines_latency(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    // The same greedy request again, stopped by the text's last characters: the API ends the
    // choice and stops it in the engine, whose `Finished` is read before the journey ends.
    let spans = stopped_twice(&server, |text| {
        let chars: Vec<char> = text.chars().collect();
        chars[chars.len().saturating_sub(2)..].iter().collect()
    })
    .await;
    assert_eq!(named(&spans, SPAN_REQUEST).len(), 3);
    let stopped = stopped_requests(&spans);
    assert_eq!(stopped.len(), 2, "both stopped requests");
    for request in stopped {
        for key in [
            attr::TIME_IN_QUEUE,
            attr::TIME_TO_FIRST_TOKEN,
            attr::E2E,
            attr::TIME_IN_MODEL_PREFILL,
            attr::TIME_IN_MODEL_INFERENCE,
        ] {
            assert!(float(request, key) > 0.0, "{key}");
        }
        if int(request, attr::COMPLETION_TOKENS) > 1 {
            assert!(float(request, attr::TIME_IN_MODEL_DECODE) > 0.0);
        }
        let departed = request
            .events
            .iter()
            .find(|e| e.name == "api.DEPARTED")
            .expect("departed");
        assert!(departed.timestamp <= request.end_time);
    }
}

async fn a_request_past_the_request_timeout_is_aborted_with_reason_timeout(mode: Mode) {
    let server = traced(
        mode,
        Options {
            step_delay: Duration::from_millis(20),
            request_timeout: Some(Duration::from_millis(150)),
            ..Options::default()
        },
    )
    .await;
    let reply = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "a", "max_tokens": 40, "ignore_eos": true}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text);
    let spans = spans(&server, 2).await;
    let request = one(&spans, SPAN_REQUEST);
    let last = request.events.events.last().expect("events");
    assert_eq!(last.name, "api.ABORTED");
    assert_eq!(event_str(last, attr::REASON), "timeout");
    assert!(matches!(request.status, Status::Error { .. }));
    assert_eq!(string(request, attr::ERROR_TYPE), "504");
    let core = one(&spans, SPAN_CORE);
    let finished = core.events.events.last().expect("events");
    assert_eq!(event_str(finished, attr::FINISH_STATUS), "aborted");
}

async fn numbers_are_recorded_exactly_as_the_client_sent_them(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let reply = server
        .post(
            "/v1/chat/completions",
            &chat(&json!({"max_tokens": 3, "temperature": 0.01, "top_p": 0.1})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let spans = spans(&server, 2).await;
    let request = one(&spans, SPAN_REQUEST);
    // Parsed as f32 these read 0.009999999776482582 and 0.10000000149011612.
    assert_eq!(float(request, attr::TEMPERATURE), 0.01);
    assert_eq!(float(request, attr::TOP_P), 0.1);
    // The server's first request finds nothing cached: present, and 0.
    assert_eq!(int(request, attr::CACHE_READ_INPUT_TOKENS), 0);
}

async fn each_core_span_names_its_choice_index(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    for n in [1, 3] {
        let reply = server
            .post(
                "/v1/chat/completions",
                &chat(&json!({"max_tokens": 2, "n": n})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    let spans = spans(&server, 6).await;
    for request in named(&spans, SPAN_REQUEST) {
        let mut indices: Vec<i64> = children(&spans, request)
            .into_iter()
            .map(|core| int(core, attr::CHOICE_INDEX))
            .collect();
        indices.sort_unstable();
        let expected: Vec<i64> = (0..int(request, attr::N)).collect();
        assert_eq!(indices, expected);
    }
}

async fn a_stop_string_finishes_the_core_span_as_stopped(mode: Mode) {
    // Steps slow enough that the stop reaches the engine before the request's last token
    // (an engine that finishes first reports `length`, which is what happened there).
    let server = traced(
        mode,
        Options {
            step_delay: Duration::from_millis(10),
            ..Options::default()
        },
    )
    .await;
    let spans = stopped_twice(&server, |text| text.chars().take(1).collect()).await;
    let stopped = stopped_requests(&spans);
    assert_eq!(stopped.len(), 2, "both stopped requests");
    for request in stopped {
        let core = children(&spans, request);
        assert_eq!(core.len(), 1);
        let finished = core[0].events.events.last().expect("events");
        assert_eq!(finished.name, "journey.FINISHED");
        assert_eq!(event_str(finished, attr::FINISH_STATUS), "stopped");
        assert!(float(request, attr::TIME_IN_MODEL_PREFILL) > 0.0);
    }
}

async fn every_response_to_a_traced_request_names_its_request_span(mode: Mode) {
    let server = traced(mode, Options::default()).await;
    let ok = chat(&json!({"max_tokens": 2}));
    let streamed = chat(&json!({"max_tokens": 2, "stream": true}));
    let invalid = chat(&json!({"max_tokens": 2, "temperature": 7}));
    let mut named_spans = Vec::new();
    for (body, status) in [
        (&ok, StatusCode::OK),
        (&streamed, StatusCode::OK),
        (&invalid, StatusCode::BAD_REQUEST),
    ] {
        let reply = server.post("/v1/chat/completions", body).await;
        assert_eq!(reply.status, status, "{}", reply.text);
        let header = reply
            .headers
            .get("traceresponse")
            .expect("traceresponse")
            .to_str()
            .expect("ASCII")
            .to_owned();
        named_spans.push(header);
    }
    let spans = spans(&server, 5).await;
    let requests = named(&spans, SPAN_REQUEST);
    assert_eq!(requests.len(), 3);
    for header in named_spans {
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4, "{header}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[3], "01", "sampled");
        assert!(
            requests.iter().any(|r| {
                r.span_context.trace_id().to_string() == parts[1]
                    && r.span_context.span_id().to_string() == parts[2]
            }),
            "{header} names no llm_request"
        );
    }
}

/// Runs a greedy chat request, then the same request twice more (non-streaming, streaming)
/// with the stop string `stop_of` picks from its text; returns the spans of all three.
async fn stopped_twice(
    server: &common::TestServer,
    stop_of: impl Fn(&str) -> String,
) -> Vec<wayfinder_trace::SpanData> {
    let plain = chat(&json!({"max_tokens": 8, "temperature": 0}));
    let reply = server.post("/v1/chat/completions", &plain).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let text = reply.json()["choices"][0]["message"]["content"]
        .as_str()
        .expect("text")
        .to_owned();
    let stop = stop_of(&text);
    assert!(!stop.is_empty(), "the test model writes text: {text:?}");
    for stream in [false, true] {
        let body = chat(
            &json!({"max_tokens": 8, "temperature": 0, "stop": [stop.clone()],
                                "stream": stream}),
        );
        let reply = server.post("/v1/chat/completions", &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    }
    spans(server, 6).await
}

/// The `llm_request` spans whose only choice finished with `stop`.
fn stopped_requests(spans: &[wayfinder_trace::SpanData]) -> Vec<&wayfinder_trace::SpanData> {
    named(spans, SPAN_REQUEST)
        .into_iter()
        .filter(|r| {
            attr_of(r, attr::FINISH_REASONS).map(ToString::to_string)
                == Some("[\"stop\"]".to_owned())
        })
        .collect()
}
