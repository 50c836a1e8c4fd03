//! The engine core in a child process dies under load: requests in flight end with 503 and
//! `engine_unavailable`, `/health` says so, and the engine comes back.

mod common;
mod journey_support;

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use wayfinder_trace::names::{SPAN_CORE, SPAN_REQUEST, attr};

use common::{MODEL, Options};
use journey_support::{Mode, event_str, named, spans, traced};

/// The engine-core child (see `common::engine_child_main`).
#[test]
#[ignore = "run by the tests as their engine core"]
fn engine_child() {
    common::engine_child_main();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_engine_process_dies_requests_end_with_503_and_it_comes_back() {
    let server = traced(
        Mode::EngineProcess,
        Options {
            step_delay: Duration::from_millis(10),
            ..Options::default()
        },
    )
    .await;
    let in_flight: Vec<_> = (0..3)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let body =
                    json!({"model": MODEL, "prompt": format!("story {i}"), "max_tokens": 200});
                server.post("/v1/completions", &body).await
            })
        })
        .collect();
    // Kill the child once all three are running.
    for _ in 0..500 {
        if server
            .engine
            .stats()
            .await
            .is_ok_and(|s| s.num_running == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = i32::try_from(server.engine_pid.expect("a child")).expect("pid");
    // SAFETY: killing the engine child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    for reply in in_flight {
        let reply = reply.await.expect("task");
        let error = reply.error(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error["type"], "service_unavailable");
    }
    // /health says so until the supervisor has restarted the child, then recovers.
    let mut saw_down = false;
    for _ in 0..1000 {
        match server.get("/health").await.status {
            StatusCode::OK if saw_down || server.engine.stats().await.is_ok() => break,
            StatusCode::OK => {}
            _ => saw_down = true,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.get("/health").await.status, StatusCode::OK);
    let after = server
        .post(
            "/v1/completions",
            &json!({"model": MODEL, "prompt": "again", "max_tokens": 3}),
        )
        .await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text);

    // Three aborted API spans (the killed child's own spans died with it) and a full journey
    // for the request after the restart.
    let spans = spans(&server, 5).await;
    let requests = named(&spans, SPAN_REQUEST);
    let reasons: Vec<String> = requests
        .iter()
        .filter_map(|r| {
            let last = r.events.events.last()?;
            (last.name == "api.ABORTED").then(|| event_str(last, attr::REASON))
        })
        .collect();
    assert_eq!(reasons, ["engine_unavailable"; 3]);
    assert_eq!(requests.len(), 4);
    assert_eq!(
        named(&spans, SPAN_CORE).len(),
        1,
        "the journey after the restart"
    );
}
