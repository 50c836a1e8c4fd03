//! Who may use an engine core, and what one client can do to another (issue 17): spoken in the
//! raw protocol, as a hostile peer would.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::TestEngine;
use tokio::io::{ReadHalf, WriteHalf};
use wayfinder_core::{EngineHandle, FinishStatus, RequestOutput, SamplingParams, StopConditions};
use wayfinder_ipc::addr::Stream;
use wayfinder_ipc::protocol::{FromEngine, Reader, ToEngine, WireRequest, Writer};
use wayfinder_ipc::{Access, EngineAddr, PROTOCOL_VERSION, Secret};

const TOKEN: &str = "the right token";
const VOCAB: usize = 128;

type Conn = (Reader<ReadHalf<Stream>>, Writer<WriteHalf<Stream>>);

/// An engine served on a fresh Unix socket with `access`; its address.
async fn engine(dir: &std::path::Path, max_requests: usize) -> (EngineHandle, EngineAddr) {
    let (engine, info) = TestEngine {
        vocab_size: VOCAB,
        num_blocks: 64,
        step_delay: Duration::from_millis(2),
    }
    .spawn();
    let addr = EngineAddr::Unix(dir.join("e.sock"));
    let listener = addr.listen().await.expect("listen");
    let access = Access {
        token: Secret::new(TOKEN).expect("token"),
        max_requests,
        tls: None,
    };
    tokio::spawn(wayfinder_ipc::serve(listener, engine.clone(), info, access));
    (engine, addr)
}

async fn open(addr: &EngineAddr, hello: Option<ToEngine>) -> (Conn, FromEngine) {
    let stream = addr.connect().await.expect("connect");
    let (read, write) = tokio::io::split(stream);
    let (mut reader, mut writer) = (Reader::new(read), Writer::new(write));
    if let Some(hello) = hello {
        writer.send(&hello).await.expect("sent");
    }
    let answer = reader.next().await.expect("an answer").expect("a message");
    ((reader, writer), answer)
}

fn hello(token: &str) -> ToEngine {
    ToEngine::Hello {
        version: PROTOCOL_VERSION,
        token: token.to_owned(),
    }
}

async fn connect(addr: &EngineAddr) -> Conn {
    let (conn, answer) = open(addr, Some(hello(TOKEN))).await;
    assert!(matches!(answer, FromEngine::Welcome { .. }), "{answer:?}");
    conn
}

fn add(seq: u64, id: &str, prompt: Vec<u32>, max_tokens: u32) -> ToEngine {
    ToEngine::Add {
        seq,
        request: Box::new(WireRequest {
            id: id.to_owned(),
            prompt,
            sampling: SamplingParams::greedy(),
            stop: StopConditions {
                max_tokens,
                ..StopConditions::default()
            },
            priority: 0,
            carrier: HashMap::new(),
            journey: false,
            cache_salt: None,
        }),
    }
}

/// Reads until request `seq` finishes; its token count and end.
async fn finish_of(conn: &mut Conn, seq: u64) -> (usize, wayfinder_core::FinishedOutput) {
    let mut tokens = 0;
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), conn.0.next::<FromEngine>())
            .await
            .expect("in time")
            .expect("open")
            .expect("a message");
        if let FromEngine::Output { seq: s, output } = message
            && s == seq
        {
            match output {
                RequestOutput::Token(_) => tokens += 1,
                RequestOutput::Finished(f) => return (tokens, f),
                RequestOutput::PromptLogprobs(_) => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_without_the_right_token_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, addr) = engine(dir.path(), 16).await;
    for offered in ["", "the wrong token", "the right token "] {
        let (_, answer) = open(&addr, Some(hello(offered))).await;
        assert!(
            matches!(&answer, FromEngine::Refused { reason } if reason.contains("token")),
            "{offered:?}: {answer:?}"
        );
    }
    // Anything but Hello first is refused too, without doing it.
    let (_, answer) = open(&addr, Some(add(1, "free", vec![1, 2], 4))).await;
    assert!(matches!(answer, FromEngine::Refused { .. }), "{answer:?}");
    assert_eq!(
        engine.stats().await.expect("stats").num_steps,
        0,
        "nothing ran"
    );
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cannot_abort_or_collide_with_anothers_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, addr) = engine(dir.path(), 16).await;
    let mut victim = connect(&addr).await;
    let mut attacker = connect(&addr).await;
    // The attacker squats the id the victim will use, then tries to abort and stop it.
    attacker
        .1
        .send(&add(1, "cmpl-next-0", vec![1, 2, 3], 200))
        .await
        .expect("sent");
    victim
        .1
        .send(&add(7, "cmpl-next-0", vec![4, 5, 6], 20))
        .await
        .expect("sent");
    tokio::time::sleep(Duration::from_millis(50)).await;
    for m in [
        ToEngine::AbortById {
            id: "cmpl-next-0".into(),
        },
        ToEngine::StopById {
            id: "cmpl-next-0".into(),
        },
        ToEngine::Abort { seq: 7 },
    ] {
        attacker.1.send(&m).await.expect("sent");
    }
    let (tokens, fin) = finish_of(&mut victim, 7).await;
    assert_eq!((tokens, fin.status), (20, FinishStatus::Length), "{fin:?}");
    // The attacker's own request was what it aborted.
    let (_, own) = finish_of(&mut attacker, 1).await;
    assert_eq!(own.status, FinishStatus::Aborted);
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_has_a_limit_of_live_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, addr) = engine(dir.path(), 3).await;
    let mut conn = connect(&addr).await;
    for seq in 0..4 {
        conn.1
            .send(&add(seq, &format!("r{seq}"), vec![1, 2], 50))
            .await
            .expect("sent");
    }
    // Every end, by request number (the refusal comes first, the three run to length).
    let mut ends = HashMap::new();
    while ends.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(20), conn.0.next::<FromEngine>())
            .await
            .expect("in time")
            .expect("open")
            .expect("a message");
        if let FromEngine::Output {
            seq,
            output: RequestOutput::Finished(f),
        } = message
        {
            ends.insert(seq, f);
        }
    }
    let fourth = &ends[&3];
    assert_eq!(fourth.status, FinishStatus::Error);
    assert!(
        fourth
            .error
            .as_deref()
            .is_some_and(|e| e.contains("requests live"))
    );
    for seq in 0..3 {
        assert_eq!(ends[&seq].status, FinishStatus::Length);
        assert_eq!(ends[&seq].usage.completion_tokens, 50);
    }
    engine.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_vocabulary_ids_get_an_error_and_the_engine_keeps_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, addr) = engine(dir.path(), 16).await;
    let mut conn = connect(&addr).await;
    conn.1
        .send(&add(1, "bad", vec![1, VOCAB as u32 + 5, u32::MAX], 4))
        .await
        .expect("sent");
    let (tokens, fin) = finish_of(&mut conn, 1).await;
    assert_eq!((tokens, fin.status), (0, FinishStatus::Error));
    assert!(fin.error.is_some_and(|e| e.contains("vocabulary")));
    // Invalid sampling values are refused by the request builder, also without harm.
    let mut bad_sampling = add(2, "nan", vec![1], 4);
    if let ToEngine::Add { request, .. } = &mut bad_sampling {
        request.sampling.temperature = 5.0;
    }
    conn.1.send(&bad_sampling).await.expect("sent");
    let (_, fin) = finish_of(&mut conn, 2).await;
    assert_eq!(fin.status, FinishStatus::Error);
    conn.1
        .send(&add(3, "good", vec![1, 2, 3], 5))
        .await
        .expect("sent");
    let (tokens, fin) = finish_of(&mut conn, 3).await;
    assert_eq!((tokens, fin.status), (5, FinishStatus::Length));
    assert!(engine.is_running());
    engine.shutdown();
}
