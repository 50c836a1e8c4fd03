//! A soak, bounded to well under a couple of minutes: concurrent streaming clients that
//! disconnect at random, 429s from a small queue, bad input mixed in, and the engine child
//! killed twice. At the end every KV block is free, memory has not run away, `/health` is 200
//! and a request needing most of the KV pool succeeds.

mod common;
mod journey_support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use common::{MODEL, Options, Running};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

/// One client's request, chosen at random; returns the status it got.
async fn one_request(client: &reqwest::Client, addr: SocketAddr, rng: &mut StdRng) -> u16 {
    let kind = rng.random_range(0..10);
    let (path, body, stream) = match kind {
        0..=3 => (
            "/v1/completions",
            json!({"model": MODEL, "prompt": format!("waves {}", rng.random::<u32>()),
                   "max_tokens": rng.random_range(20..80), "stream": true}),
            true,
        ),
        4 | 5 => (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "tell me"}],
                   "max_tokens": rng.random_range(5..40), "n": 2}),
            false,
        ),
        6 => (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 4, "stop": ["a", "b"],
                   "logprobs": 2, "echo": true}),
            false,
        ),
        // Bad input of several kinds.
        7 => (
            "/v1/completions",
            json!({"model": MODEL, "prompt": []}),
            false,
        ),
        8 => (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": "not a list", "temperature": -4}),
            false,
        ),
        _ => (
            "/v1/completions",
            json!({"model": "other", "prompt": "x"}),
            false,
        ),
    };
    let url = format!("http://{addr}{path}");
    let Ok(response) = client.post(url).json(&body).send().await else {
        return 0;
    };
    let status = response.status().as_u16();
    if stream && status == 200 {
        // Read a random number of chunks, then (usually) hang up.
        let keep = rng.random_range(0..12);
        let mut chunks = response.bytes_stream();
        let mut n = 0;
        while let Some(Ok(_)) = chunks.next().await {
            n += 1;
            if n == keep {
                break;
            }
        }
    } else {
        let _ = response.bytes().await;
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soak_with_disconnects_overload_bad_input_and_a_dying_engine() {
    let running = Running::start(&Options {
        engine_process: true,
        max_num_seqs: 4,
        max_waiting_requests: 4,
        num_blocks: 32,
        max_model_len: 480,
        step_delay: Duration::from_millis(1),
        ..Options::default()
    })
    .await;
    let rss_before = common::rss_kib();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for c in 0..10u64 {
        let client = client.clone();
        let addr = running.addr;
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c);
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(one_request(&client, addr, &mut rng).await);
            }
            statuses
        }));
    }
    // The engine child dies twice while the clients run.
    let status = running.server.remote.clone().expect("an engine child");
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let pid = i32::try_from(status.pid()).expect("pid");
        // SAFETY: killing the engine child this test started.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    }
    let mut seen = std::collections::BTreeMap::new();
    for t in tasks {
        for s in t.await.expect("client task") {
            *seen.entry(s).or_insert(0) += 1;
        }
    }
    eprintln!("soak statuses: {seen:?}");
    // Only answers a client may expect: success, its own mistakes, overload, the engine gone.
    assert!(
        seen.keys().all(|s| [200, 400, 404, 429, 503].contains(s)),
        "{seen:?}"
    );
    assert!(seen.get(&200).is_some_and(|&n| n > 20), "{seen:?}");
    assert!(
        seen.contains_key(&400) && seen.contains_key(&404),
        "{seen:?}"
    );

    // The end state: the engine back twice and healthy, idle, every block free, memory
    // bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ok = client
            .get(running.url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ok && status.restarts() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/health never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = running.server.wait_idle().await;
    assert_eq!(stats.num_free_blocks, stats.num_total_blocks);
    let growth_mib = common::rss_kib().saturating_sub(rss_before) / 1024;
    assert!(growth_mib < 256, "RSS grew by {growth_mib} MiB");
    // A request that needs most of the pool (29 of 32 blocks) is served.
    let prompt: Vec<u32> = (0..400).map(|i| 40 + (i % 60)).collect();
    let big: Value = client
        .post(running.url("/v1/completions"))
        .json(&json!({"model": MODEL, "prompt": prompt, "max_tokens": 60, "ignore_eos": true}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(big["usage"]["completion_tokens"], 60, "{big}");
}
