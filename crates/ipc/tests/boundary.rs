//! The process boundary with a real engine-core child (this test binary, re-run as
//! `engine_child` with the deterministic test executor): aborts and disconnects cross it and
//! free the child's blocks, a killed child ends the requests in flight cleanly and comes back,
//! and a peer of another protocol version is refused.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::TestEngine;
use wayfinder_core::{
    EngineHandle, EngineRequest, EngineStats, FinishStatus, RequestOutput, SamplingParams,
    StopConditions,
};
use wayfinder_ipc::protocol::{FromEngine, Reader, ToEngine, Writer};
use wayfinder_ipc::{
    Access, EngineAddr, EngineInfo, RemoteConfig, RemoteStatus, Secret, SecretText, SpawnSpec,
};

const CHILD_ENV: &str = "WAYFINDER_IPC_TEST_ENGINE";
const NUM_BLOCKS: usize = 64;

fn local_engine() -> (EngineHandle, EngineInfo) {
    TestEngine {
        vocab_size: 512,
        num_blocks: NUM_BLOCKS,
        step_delay: Duration::from_millis(5),
    }
    .spawn()
}

/// The engine-core child: serves a test-executor engine at `$WAYFINDER_IPC_TEST_ENGINE` until
/// its stdin closes. Does nothing when run without it.
#[test]
#[ignore = "run by the other tests as their engine-core child"]
fn engine_child() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (engine, info) = local_engine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = EngineAddr::parse(&addr)
            .expect("address")
            .listen()
            .await
            .expect("listen");
        tokio::select! {
            _ = wayfinder_ipc::serve(listener, engine.clone(), info, access()) => {}
            () = wayfinder_ipc::stdin_closed() => {}
        }
    });
    engine.shutdown();
}

/// The engine token of these tests.
const TOKEN: &str = "boundary-test-token";

fn access() -> Access {
    Access::new(Secret::new(TOKEN).expect("a token"))
}

fn connect_child(dir: &Path) -> (EngineHandle, EngineInfo, std::sync::Arc<RemoteStatus>) {
    let addr = EngineAddr::Unix(dir.join("engine.sock"));
    let spawn = SpawnSpec {
        program: std::env::current_exe().expect("this test binary"),
        args: ["engine_child", "--exact", "--ignored", "--nocapture"]
            .map(Into::into)
            .to_vec(),
        envs: vec![(CHILD_ENV.into(), addr.to_string().into())],
    };
    let config = RemoteConfig {
        startup_timeout: Duration::from_secs(30),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(500),
        ..RemoteConfig::new(addr, Some(spawn), SecretText::new(TOKEN))
    };
    wayfinder_ipc::connect(config).expect("the engine core starts")
}

fn request(id: &str, max_tokens: u32) -> EngineRequest {
    EngineRequest::builder(id, vec![1, 2, 3, 4, 5])
        .sampling(SamplingParams::greedy())
        .stop(StopConditions {
            max_tokens,
            ignore_eos: true,
            ..StopConditions::default()
        })
        .build()
        .expect("valid")
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn idle(stats: &EngineStats) -> bool {
    stats.num_running == 0
        && stats.num_waiting == 0
        && stats.num_free_blocks == stats.num_total_blocks
}

#[test]
fn a_request_runs_across_the_boundary_and_a_dropped_stream_frees_the_childs_blocks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, info, status) = connect_child(dir.path());
    assert_ne!(
        info.pid,
        std::process::id(),
        "the engine runs in another process"
    );
    assert_eq!(status.pid(), info.pid);
    assert!(engine.is_running());

    let mut whole = engine.add_request(request("a", 6)).expect("added");
    let mut tokens = 0;
    let finished = loop {
        match whole.blocking_next().expect("outputs until Finished") {
            RequestOutput::Token(_) => tokens += 1,
            RequestOutput::PromptLogprobs(_) => panic!("not asked for"),
            RequestOutput::Finished(f) => break f,
        }
    };
    assert_eq!((tokens, finished.status), (6, FinishStatus::Length));
    assert_eq!(finished.usage.completion_tokens, 6);

    let mut abandoned = engine.add_request(request("b", 500)).expect("added");
    assert!(matches!(
        abandoned.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    let busy = engine.stats_blocking().expect("stats over the boundary");
    assert_eq!(busy.num_running, 1);
    assert!(busy.num_free_blocks < busy.num_total_blocks);
    drop(abandoned);
    wait_until("the child frees the blocks", || {
        idle(&engine.stats_blocking().expect("stats"))
    });

    // Abort by id crosses too.
    let mut by_id = engine.add_request(request("c", 500)).expect("added");
    assert!(matches!(
        by_id.blocking_next(),
        Some(RequestOutput::Token(_))
    ));
    engine.abort("c").expect("sent");
    let end = std::iter::from_fn(|| by_id.blocking_next()).last();
    assert!(matches!(end, Some(RequestOutput::Finished(f)) if f.status == FinishStatus::Aborted));
    engine.shutdown();
}

#[test]
fn killing_the_child_mid_load_ends_requests_cleanly_then_it_comes_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, info, status) = connect_child(dir.path());
    let mut streams: Vec<_> = (0..4)
        .map(|i| {
            engine
                .add_request(request(&format!("r{i}"), 800))
                .expect("added")
        })
        .collect();
    for s in &mut streams {
        assert!(matches!(s.blocking_next(), Some(RequestOutput::Token(_))));
    }
    let pid = i32::try_from(info.pid).expect("pid");
    // SAFETY: killing the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    for s in &mut streams {
        // Tokens already sent may still arrive; then the stream ends without a `Finished`.
        let last = std::iter::from_fn(|| s.blocking_next()).last();
        assert!(
            !matches!(last, Some(RequestOutput::Finished(_))),
            "a lost request ends without a Finished: {last:?}"
        );
    }
    wait_until("the engine comes back", || {
        status.restarts() == 1 && engine.is_running()
    });
    assert_ne!(status.pid(), info.pid, "a new child");
    let mut again = engine.add_request(request("after", 4)).expect("added");
    let end = std::iter::from_fn(|| again.blocking_next()).last();
    assert!(matches!(end, Some(RequestOutput::Finished(f)) if f.status == FinishStatus::Length));
    engine.shutdown();
    assert!(!engine.is_running());
}

#[test]
fn a_peer_of_another_protocol_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = EngineAddr::Unix(dir.path().join("e.sock"));
    let (engine, info) = local_engine();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let listener = addr.listen().await.expect("listen");
        tokio::spawn(wayfinder_ipc::serve(
            listener,
            engine.clone(),
            info,
            access(),
        ));
        let stream = addr.connect().await.expect("connect");
        let (read, write) = tokio::io::split(stream);
        let (mut reader, mut writer) = (Reader::new(read), Writer::new(write));
        writer
            .send(&ToEngine::Hello {
                version: 99,
                token: TOKEN.into(),
            })
            .await
            .expect("sent");
        let answer: FromEngine = reader.next().await.expect("an answer").expect("a message");
        assert!(
            matches!(&answer, FromEngine::Refused { reason } if reason.contains("99")),
            "{answer:?}"
        );
    });
    engine.shutdown();
}
