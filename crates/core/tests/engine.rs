//! The engine through `EngineHandle`, with the deterministic test executor.

use std::time::Duration;

use wayfinder_core::testing::{JourneyLog, RecordingObserver, TestExecutor, TestExecutorConfig};
use wayfinder_core::{
    Carrier, EngineConfig, EngineError, EngineHandle, EngineRequest, FinishStatus, FinishedOutput,
    JourneyEventKind, PreemptReason, RequestOutput, RequestStream, SamplingParams, ScheduleKind,
    SchedulerConfig, StopConditions,
};

const VOCAB: usize = 64;

struct Setup {
    num_blocks: usize,
    block_size: usize,
    max_num_seqs: usize,
    budget: usize,
    step_delay: Duration,
    fail_on_steps: Vec<u64>,
    panic_on_steps: Vec<u64>,
    eos: Vec<u32>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            num_blocks: 512,
            block_size: 16,
            max_num_seqs: 256,
            budget: 512,
            step_delay: Duration::ZERO,
            fail_on_steps: Vec::new(),
            panic_on_steps: Vec::new(),
            eos: Vec::new(),
        }
    }
}

impl Setup {
    fn executor_config(&self) -> TestExecutorConfig {
        TestExecutorConfig {
            vocab_size: VOCAB,
            num_slots: self.num_blocks * self.block_size,
            step_delay: self.step_delay,
            avoid_tokens: self.eos.clone(),
            fail_on_steps: self.fail_on_steps.clone(),
            panic_on_steps: self.panic_on_steps.clone(),
        }
    }

    fn reference(&self) -> TestExecutor {
        TestExecutor::new(self.executor_config())
    }

    fn spawn(&self, observer: bool) -> (EngineHandle, JourneyLog) {
        let config = EngineConfig {
            scheduler: SchedulerConfig {
                max_num_seqs: self.max_num_seqs,
                max_num_batched_tokens: self.budget,
                max_model_len: (self.num_blocks * self.block_size).min(512),
                block_size: self.block_size,
                num_blocks: self.num_blocks,
                ..SchedulerConfig::default()
            },
            eos_token_ids: self.eos.clone(),
            seed: Some(7),
        };
        let (recorder, log) = RecordingObserver::new();
        let observer = observer.then(|| Box::new(recorder) as _);
        let handle =
            EngineHandle::spawn(config, Box::new(self.reference()), observer).expect("spawn");
        (handle, log)
    }
}

fn prompt(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((i * 31 + j * 7) % VOCAB) as u32)
        .collect()
}

fn greedy(id: &str, prompt: Vec<u32>, max_tokens: u32) -> EngineRequest {
    EngineRequest::builder(id, prompt)
        .sampling(SamplingParams::greedy())
        .max_tokens(max_tokens)
        .build()
        .expect("valid")
}

fn collect(mut stream: RequestStream) -> (Vec<u32>, FinishedOutput) {
    let mut tokens = Vec::new();
    while let Some(out) = stream.blocking_next() {
        match out {
            RequestOutput::Token(t) => tokens.push(t.token_id),
            RequestOutput::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
            RequestOutput::Finished(f) => {
                assert!(stream.blocking_next().is_none(), "nothing after Finished");
                return (tokens, f);
            }
        }
    }
    panic!("stream ended without Finished");
}

fn used_blocks(engine: &EngineHandle) -> usize {
    let s = engine.stats_blocking().expect("engine running");
    s.num_total_blocks - s.num_free_blocks
}

#[test]
fn hundred_concurrent_requests_finish_with_the_right_tokens() {
    let setup = Setup::default();
    let (engine, _) = setup.spawn(false);
    let reference = setup.reference();
    let requests: Vec<(Vec<u32>, u32)> = (0..100)
        .map(|i| (prompt(i, 1 + i * 3 % 90), 1 + (i % 17) as u32))
        .collect();
    let streams: Vec<RequestStream> = requests
        .iter()
        .enumerate()
        .map(|(i, (p, n))| {
            engine
                .add_request(greedy(&format!("r{i}"), p.clone(), *n))
                .expect("add")
        })
        .collect();
    for ((p, n), stream) in requests.iter().zip(streams) {
        let (tokens, fin) = collect(stream);
        assert_eq!(fin.status, FinishStatus::Length);
        assert_eq!(fin.usage.prompt_tokens, p.len());
        assert_eq!(fin.usage.completion_tokens, *n as usize);
        assert_eq!(tokens, reference.expected_greedy(p, *n as usize));
        let t = fin.timestamps;
        let first_token = t.first_token.expect("had tokens");
        assert!(t.arrival <= t.queued && t.queued <= t.first_scheduled.expect("ran"));
        assert!(first_token <= t.last_token.expect("had tokens"));
        assert!(t.last_token <= t.finished);
    }
    assert_eq!(used_blocks(&engine), 0);
    engine.shutdown();
}

#[test]
fn a_small_kv_pool_preempts_but_gives_the_same_outputs() {
    let requests: Vec<(Vec<u32>, u32)> = (0..24).map(|i| (prompt(i, 20 + i), 40)).collect();
    let run = |setup: &Setup| {
        let (engine, log) = setup.spawn(true);
        let streams: Vec<_> = requests
            .iter()
            .enumerate()
            .map(|(i, (p, n))| {
                engine
                    .add_request(greedy(&format!("r{i}"), p.clone(), *n))
                    .expect("add")
            })
            .collect();
        let outputs: Vec<_> = streams.into_iter().map(collect).collect();
        assert_eq!(used_blocks(&engine), 0);
        engine.shutdown();
        (outputs, log)
    };
    let (large, _) = run(&Setup::default());
    // 16 blocks of 8 slots: four 60-token requests at most, fewer as they grow.
    let small_setup = Setup {
        num_blocks: 16,
        block_size: 8,
        budget: 64,
        ..Setup::default()
    };
    let (small, log) = run(&small_setup);
    let preemptions: u32 = small.iter().map(|(_, f)| f.num_preemptions).sum();
    assert!(preemptions > 0, "the small pool must force preemptions");
    for ((lt, lf), (st, sf)) in large.iter().zip(&small) {
        assert_eq!(lt, st, "greedy output must not depend on the pool");
        assert_eq!(
            (lf.status, sf.status),
            (FinishStatus::Length, FinishStatus::Length)
        );
    }
    // The journey: QUEUED → SCHEDULED(FIRST) → FIRST_TOKEN → FINISHED, with
    // PREEMPTED → SCHEDULED(RESUME) per preemption, and prefill progress never going down.
    for (i, (_, fin)) in small.iter().enumerate() {
        let events = log.of(&format!("r{i}"));
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds[0], JourneyEventKind::Queued);
        assert_eq!(kinds[1], JourneyEventKind::Scheduled(ScheduleKind::First));
        assert_eq!(
            *kinds.last().expect("events"),
            JourneyEventKind::Finished(FinishStatus::Length)
        );
        let count = |k: JourneyEventKind| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(count(JourneyEventKind::FirstToken), 1);
        let n = fin.num_preemptions as usize;
        assert_eq!(
            count(JourneyEventKind::Preempted(PreemptReason::KvCacheFull)),
            n
        );
        assert_eq!(count(JourneyEventKind::Scheduled(ScheduleKind::Resume)), n);
        let pairs = kinds.windows(2).filter(|w| {
            matches!(w[0], JourneyEventKind::Preempted(_))
                && w[1] == JourneyEventKind::Scheduled(ScheduleKind::Resume)
        });
        assert_eq!(
            pairs.count(),
            n,
            "each PREEMPTED is followed by its RESUME: {kinds:?}"
        );
        let prefill: Vec<_> = events
            .iter()
            .map(|e| e.fields.prefill_done_tokens)
            .collect();
        assert!(prefill.windows(2).all(|w| w[0] <= w[1]), "{prefill:?}");
        let last = events.last().expect("events").fields;
        assert_eq!(last.prefill_done_tokens, last.prefill_total_tokens);
        assert_eq!(last.decode_done_tokens, 40);
        assert_eq!(last.num_preemptions, fin.num_preemptions);
        let steps: Vec<_> = events.iter().map(|e| e.fields.scheduler_step).collect();
        assert!(steps.windows(2).all(|w| w[0] <= w[1]));
        let ts: Vec<_> = events.iter().map(|e| e.fields.ts_monotonic).collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
    }
}

#[test]
fn journey_without_preemption_and_its_fields() {
    let setup = Setup::default();
    let (engine, log) = setup.spawn(true);
    let mut carrier = Carrier::new();
    carrier.insert(
        "traceparent".into(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
    );
    let request = EngineRequest::builder("j1", prompt(1, 5))
        .sampling(SamplingParams::greedy())
        .max_tokens(3)
        .carrier(carrier.clone())
        .build()
        .expect("valid");
    let (_, fin) = collect(engine.add_request(request).expect("add"));
    engine.shutdown();
    let events = log.of("j1");
    let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            JourneyEventKind::Queued,
            JourneyEventKind::Scheduled(ScheduleKind::First),
            JourneyEventKind::FirstToken,
            JourneyEventKind::Finished(FinishStatus::Length),
        ]
    );
    assert!(
        events.iter().all(|e| e.carrier == carrier),
        "the carrier passes through untouched"
    );
    let phases: Vec<_> = events.iter().map(|e| e.fields.phase.as_str()).collect();
    assert_eq!(phases, vec!["WAITING", "PREFILL", "DECODE", "DECODE"]);
    let f: Vec<_> = events.iter().map(|e| e.fields).collect();
    assert_eq!(f[0].scheduler_step, 0, "queued before any step");
    assert_eq!(f[1].scheduler_step, 1);
    assert_eq!((f[1].prefill_done_tokens, f[2].prefill_done_tokens), (0, 5));
    assert_eq!(f[2].decode_done_tokens, 1);
    assert!(
        f.iter()
            .all(|x| x.prefill_total_tokens == 5 && x.decode_max_tokens == 3)
    );
    assert_eq!(
        f[3].ts_monotonic_ns(),
        (f[3].ts_monotonic * 1e9).round() as i64
    );
    assert_eq!(Some(f[3].ts_monotonic), fin.timestamps.finished);
}

#[test]
fn abort_and_dropped_streams_free_every_block() {
    let setup = Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let mut aborted = engine
        .add_request(greedy("abort-me", prompt(1, 40), 400))
        .expect("add");
    let dropped = engine
        .add_request(greedy("drop-me", prompt(2, 40), 400))
        .expect("add");
    // Both are mid-generation once a token has come back.
    assert!(matches!(
        aborted.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    assert!(used_blocks(&engine) > 0);
    engine.abort("abort-me").expect("running");
    drop(dropped);
    let (_, fin) = collect(aborted);
    assert_eq!(fin.status, FinishStatus::Aborted);
    assert!(fin.usage.completion_tokens >= 1);
    assert_eq!(
        used_blocks(&engine),
        0,
        "stats are taken after the drop's abort"
    );
    let last = |id: &str| log.of(id).last().map(|e| e.kind);
    assert_eq!(
        last("abort-me"),
        Some(JourneyEventKind::Finished(FinishStatus::Aborted))
    );
    assert_eq!(
        last("drop-me"),
        Some(JourneyEventKind::Finished(FinishStatus::Aborted))
    );
    // Aborting an unknown or finished id is harmless.
    engine.abort("abort-me").expect("running");
    assert_eq!(used_blocks(&engine), 0);
    engine.shutdown();
}

#[test]
fn a_request_stopped_by_id_finishes_stopped_and_frees_its_blocks() {
    let setup = Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let mut stream = engine
        .add_request(greedy("stop-me", prompt(1, 40), 400))
        .expect("add");
    assert!(matches!(
        stream.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    // The API layer found a stop string in its text.
    engine.stop("stop-me").expect("running");
    let (_, fin) = collect(stream);
    assert_eq!(fin.status, FinishStatus::Stopped);
    assert!(fin.timestamps.first_token.is_some());
    assert_eq!(used_blocks(&engine), 0);
    assert_eq!(
        log.of("stop-me").last().map(|e| e.kind),
        Some(JourneyEventKind::Finished(FinishStatus::Stopped))
    );
    // Stopping an unknown or finished id is harmless.
    engine.stop("stop-me").expect("running");
    engine.shutdown();
}

#[test]
fn eos_and_stop_tokens_end_with_stopped() {
    let setup = Setup {
        eos: vec![3],
        ..Setup::default()
    };
    let (engine, _) = setup.spawn(false);
    let p = prompt(5, 8);
    let expected = setup.reference().expected_greedy(&p, 6);
    // A stop token id: the third greedy token.
    let request = EngineRequest::builder("stop", p)
        .sampling(SamplingParams::greedy())
        .stop(StopConditions {
            max_tokens: 6,
            stop_token_ids: vec![expected[2]],
            ignore_eos: false,
        })
        .build()
        .expect("valid");
    let (tokens, fin) = collect(engine.add_request(request).expect("add"));
    let cut = expected
        .iter()
        .position(|&t| t == expected[2])
        .expect("present")
        + 1;
    assert_eq!(tokens, expected[..cut]);
    assert_eq!(fin.status, FinishStatus::Stopped);
    assert_eq!(fin.usage.completion_tokens, cut);
    engine.shutdown();
}

#[test]
fn seeded_sampling_is_reproducible() {
    let setup = Setup::default();
    let run = || {
        let (engine, _) = setup.spawn(false);
        let request = |id: &str, seed| {
            EngineRequest::builder(id, prompt(9, 6))
                .sampling(SamplingParams {
                    temperature: 1.5,
                    seed: Some(seed),
                    ..SamplingParams::default()
                })
                .max_tokens(30)
                .build()
                .expect("valid")
        };
        let a = collect(engine.add_request(request("a", 1)).expect("add")).0;
        let b = collect(engine.add_request(request("b", 2)).expect("add")).0;
        engine.shutdown();
        (a, b)
    };
    let (a1, b1) = run();
    let (a2, b2) = run();
    assert_eq!(a1, a2);
    assert_eq!(b1, b2);
    assert_ne!(a1, b1, "different seeds give different tokens");
}

#[test]
fn an_executor_failure_ends_the_steps_requests_with_error() {
    let setup = Setup {
        fail_on_steps: vec![3],
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let stream = engine
        .add_request(greedy("doomed", prompt(1, 4), 10))
        .expect("add");
    let (tokens, fin) = collect(stream);
    assert_eq!(fin.status, FinishStatus::Error);
    assert_eq!(tokens.len(), 2, "steps 1 and 2 produced tokens");
    assert!(
        fin.error
            .as_deref()
            .is_some_and(|e| e.contains("scripted failure"))
    );
    assert_eq!(
        log.of("doomed").last().map(|e| e.kind),
        Some(JourneyEventKind::Finished(FinishStatus::Error))
    );
    // The engine carries on.
    let (tokens, fin) = collect(
        engine
            .add_request(greedy("next", prompt(2, 4), 5))
            .expect("add"),
    );
    assert_eq!((tokens.len(), fin.status), (5, FinishStatus::Length));
    assert_eq!(used_blocks(&engine), 0);
    engine.shutdown();
}

#[test]
fn impossible_prompts_are_ignored_and_duplicate_ids_rejected() {
    let setup = Setup {
        num_blocks: 4,
        block_size: 8,
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let (tokens, fin) = collect(
        engine
            .add_request(greedy("huge", prompt(1, 40), 4))
            .expect("add"),
    );
    assert!(tokens.is_empty());
    assert_eq!(fin.status, FinishStatus::Ignored);
    let kinds: Vec<_> = log.of("huge").iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![
            JourneyEventKind::Queued,
            JourneyEventKind::Finished(FinishStatus::Ignored)
        ]
    );
    let slow = Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    };
    let (engine, _) = slow.spawn(false);
    let mut first = engine
        .add_request(greedy("same", prompt(1, 4), 300))
        .expect("add");
    assert!(matches!(
        first.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    let (_, dup) = collect(
        engine
            .add_request(greedy("same", prompt(1, 4), 3))
            .expect("add"),
    );
    assert_eq!(dup.status, FinishStatus::Error);
    assert!(
        dup.error
            .as_deref()
            .is_some_and(|e| e.contains("already in use"))
    );
    engine.abort("same").expect("running");
    assert_eq!(
        collect(first).1.status,
        FinishStatus::Aborted,
        "the original is unharmed until aborted"
    );
    engine.shutdown();
}

#[test]
fn shutdown_aborts_in_flight_requests_and_refuses_new_ones() {
    let setup = Setup {
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let mut stream = engine
        .add_request(greedy("inflight", prompt(1, 4), 10_000))
        .expect("add");
    assert!(matches!(
        stream.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    let clone = engine.clone();
    engine.shutdown();
    assert!(!clone.is_running());
    assert_eq!(collect(stream).1.status, FinishStatus::Aborted);
    assert_eq!(
        log.of("inflight").last().map(|e| e.kind),
        Some(JourneyEventKind::Finished(FinishStatus::Aborted))
    );
    assert_eq!(
        clone.add_request(greedy("late", prompt(1, 4), 1)).err(),
        Some(EngineError::NotRunning)
    );
    clone.shutdown();
}

#[tokio::test(flavor = "current_thread")]
async fn streams_are_usable_from_async_code() {
    let (engine, _) = Setup::default().spawn(false);
    let mut stream = engine
        .add_request(greedy("async", prompt(3, 10), 4))
        .expect("add");
    let mut n = 0;
    while let Some(out) = stream.next().await {
        if let RequestOutput::Finished(f) = out {
            assert_eq!(f.usage.completion_tokens, 4);
            break;
        }
        n += 1;
    }
    assert_eq!(n, 4);
    assert_eq!(engine.stats().await.expect("running").num_running, 0);
    tokio::task::spawn_blocking(move || engine.shutdown())
        .await
        .expect("joined");
}

#[test]
fn a_panic_fails_the_requests_in_flight_and_the_engine_recovers() {
    let setup = Setup {
        panic_on_steps: vec![3],
        step_delay: Duration::from_millis(2),
        ..Setup::default()
    };
    let (engine, log) = setup.spawn(true);
    let streams: Vec<_> = (0..3)
        .map(|i| {
            engine
                .add_request(greedy(&format!("p{i}"), prompt(i, 10), 20))
                .expect("add")
        })
        .collect();
    for (i, s) in streams.into_iter().enumerate() {
        let (_, fin) = collect(s);
        assert_eq!(fin.status, FinishStatus::Error);
        let error = fin.error.expect("a reason");
        assert!(error.contains("scripted panic at step 3"), "{error}");
        let events = log.of(&format!("p{i}"));
        assert_eq!(
            events.last().map(|e| e.kind),
            Some(JourneyEventKind::Finished(FinishStatus::Error))
        );
    }
    // Unhealthy while it recovers, then serving again with every block free.
    assert!(!engine.is_running(), "unhealthy right after the panic");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !engine.is_running() {
        assert!(
            std::time::Instant::now() < deadline,
            "the engine did not recover"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(used_blocks(&engine), 0);
    let p = prompt(9, 12);
    let (tokens, fin) = collect(
        engine
            .add_request(greedy("after", p.clone(), 5))
            .expect("add"),
    );
    assert_eq!(fin.status, FinishStatus::Length);
    assert_eq!(tokens, setup.reference().expected_greedy(&p, 5));
    engine.shutdown();
}

#[test]
fn a_token_id_outside_the_vocabulary_is_refused_and_the_engine_keeps_serving() {
    let setup = Setup::default();
    let (engine, _) = setup.spawn(false);
    let bad = greedy("bad", vec![1, VOCAB as u32, 2], 4);
    let (tokens, fin) = collect(engine.add_request(bad).expect("add"));
    assert!(tokens.is_empty());
    assert_eq!(fin.status, FinishStatus::Error);
    assert!(
        fin.error
            .expect("why")
            .contains("outside the model's vocabulary")
    );
    let p = prompt(1, 8);
    let (tokens, fin) = collect(
        engine
            .add_request(greedy("good", p.clone(), 4))
            .expect("add"),
    );
    assert_eq!(fin.status, FinishStatus::Length);
    assert_eq!(tokens, setup.reference().expected_greedy(&p, 4));
    assert!(engine.is_running());
    engine.shutdown();
}

#[test]
fn a_request_that_asks_gets_its_journey_marks_back_across_preemption() {
    let setup = Setup {
        num_blocks: 16,
        block_size: 8,
        budget: 64,
        ..Setup::default()
    };
    // No observer: the marks do not depend on tracing.
    let (engine, _) = setup.spawn(false);
    let streams: Vec<_> = (0..6)
        .map(|i| {
            let request = EngineRequest::builder(format!("j{i}"), prompt(i, 20))
                .sampling(SamplingParams::greedy())
                .max_tokens(40)
                .journey(i % 2 == 0)
                .build()
                .expect("valid");
            engine.add_request(request).expect("add")
        })
        .collect();
    let mut preempted = 0;
    for (i, s) in streams.into_iter().enumerate() {
        let (_, fin) = collect(s);
        if i % 2 == 1 {
            assert!(fin.journey.is_empty(), "not asked for");
            continue;
        }
        let kinds: Vec<_> = fin.journey.iter().map(|m| m.kind).collect();
        assert_eq!(kinds[0], JourneyEventKind::Queued);
        assert_eq!(kinds[1], JourneyEventKind::Scheduled(ScheduleKind::First));
        assert_eq!(
            *kinds.last().expect("marks"),
            JourneyEventKind::Finished(FinishStatus::Length)
        );
        let count = |k: JourneyEventKind| kinds.iter().filter(|&&x| x == k).count();
        assert_eq!(count(JourneyEventKind::FirstToken), 1);
        let n = fin.num_preemptions as usize;
        assert_eq!(
            count(JourneyEventKind::Preempted(PreemptReason::KvCacheFull)),
            n
        );
        assert_eq!(count(JourneyEventKind::Scheduled(ScheduleKind::Resume)), n);
        assert!(fin.journey.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(fin.journey.last().map(|m| m.decode_done_tokens), Some(40));
        preempted += n;
    }
    assert!(preempted > 0, "the small pool must preempt some of them");
    engine.shutdown();
}
