//! One request's memory is bounded by its size, not multiplied by `n` (issue 17): the largest
//! stop list allowed, on the most choices the server holds, stays within a small bound. (Alone
//! in its test binary, so that the process's RSS is this test's.)

mod common;

use axum::http::StatusCode;
use serde_json::json;

use common::{MODEL, Options, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_stop_list_on_many_choices_stays_within_a_bound() {
    let server = TestServer::new(&Options {
        max_num_seqs: 16,
        max_waiting_requests: 240,
        max_body_bytes: 1 << 20,
        ..Options::default()
    });
    // 64 stop strings of 1 KiB that never match, on 4 prompts × n = 16: 64 choices.
    let stops: Vec<String> = (0..64)
        .map(|i| format!("{i:04}{}", "~".repeat(1020)))
        .collect();
    let body = json!({"model": MODEL, "prompt": ["a", "b", "c", "d"], "n": 16,
                      "max_tokens": 8, "stop": stops});
    // Once to warm up allocators and the tokenizer, then measured.
    assert_eq!(
        server.post("/v1/completions", &body).await.status,
        StatusCode::OK
    );
    let before = common::rss_kib();
    let replies =
        futures_util::future::join_all((0..4).map(|_| server.post("/v1/completions", &body))).await;
    let after = common::rss_kib();
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let grown_mib = after.saturating_sub(before) / 1024;
    // Copied per choice, as before, these would be 4 × 64 copies of 64 KiB of strings and of
    // their automaton (~0.8 MiB each): ~200 MiB. Shared, a few MiB.
    assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    server.wait_idle().await;
}
