//! Property tests of the engine protocol's edge: arbitrary bytes never panic the frame decoder,
//! and whatever a peer without the token sends never reaches the engine.

mod support;

use std::time::Duration;

use proptest::prelude::*;
use support::TestEngine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wayfinder_core::EngineHandle;
use wayfinder_ipc::protocol::{FromEngine, Reader, ToEngine};
use wayfinder_ipc::{Access, EngineAddr, EngineInfo, Secret};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Bytes shaped like frames: a length prefix (sometimes honest) and JSON-ish or random bodies.
fn frames() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "[{}\\[\\]\":,a-zA-Z0-9 ]{0,200}".prop_map(String::into_bytes),
        Just(
            br#"{"Add":{"seq":1,"request":{"id":"x","prompt":[1,2],"sampling":{},"stop":{}}}}"#
                .to_vec()
        ),
        Just(br#"{"Hello":{"version":3,"token":"guess"}}"#.to_vec()),
    ];
    proptest::collection::vec((body, any::<bool>(), any::<u32>()), 1..6).prop_map(|parts| {
        let mut out = Vec::new();
        for (body, honest, len) in parts {
            let len = if honest { body.len() as u32 } else { len };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body);
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn the_frame_decoder_never_panics(bytes in prop_oneof![frames(), proptest::collection::vec(any::<u8>(), 0..600)]) {
        runtime().block_on(async {
            let (mut a, b) = tokio::io::duplex(1 << 16);
            a.write_all(&bytes).await.expect("written");
            drop(a);
            let mut reader = Reader::new(b);
            // Until the end or the first error: each frame decodes or is an error.
            for _ in 0..16 {
                match reader.next::<ToEngine>().await {
                    None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        });
    }
}

fn engine() -> (EngineHandle, EngineInfo) {
    TestEngine {
        vocab_size: 64,
        num_blocks: 16,
        step_delay: std::time::Duration::ZERO,
    }
    .spawn()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn nothing_from_a_peer_without_the_token_reaches_the_engine(bytes in frames()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let (engine, info) = engine();
        runtime().block_on(async {
            let addr = EngineAddr::Unix(dir.path().join("e.sock"));
            let listener = addr.listen().await.expect("listen");
            let access = Access::new(Secret::new("the token").expect("token"));
            tokio::spawn(wayfinder_ipc::serve(listener, engine.clone(), info, access));
            let mut stream = addr.connect().await.expect("connect");
            let _ = stream.write_all(&bytes).await;
            let _ = stream.shutdown().await;
            // Read whatever comes back (a refusal at most) until the engine closes.
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut sink)).await;
            if !sink.is_empty() {
                let mut reader = Reader::new(&sink[..]);
                if let Some(Ok(answer)) = reader.next::<FromEngine>().await {
                    prop_assert!(matches!(answer, FromEngine::Refused { .. }), "{:?}", answer);
                }
            }
            let stats = engine.stats().await.expect("the engine still serves");
            prop_assert_eq!(stats.num_steps, 0, "nothing ran");
            prop_assert_eq!(stats.num_running + stats.num_waiting, 0);
            Ok(())
        })?;
        engine.shutdown();
    }
}
