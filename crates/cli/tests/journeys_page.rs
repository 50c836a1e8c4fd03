//! `/journeys` in a real browser (issue 18): `wayfinder serve` on the demo model, a few
//! requests, and headless Chromium (`.ci/run` installs Debian's `chromium`) rendering the page;
//! the rendered DOM lists the requests, and the page opened on one (`/journeys#<id>`) shows its
//! timeline's events.

mod common;

use std::process::Command;

use serde_json::{Value, json};

use common::{field, serve_ready_line};

/// Chromium's binary: `$CHROMIUM`, else the first of the usual names on the PATH.
fn chromium() -> String {
    if let Ok(path) = std::env::var("CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if found {
            return name.to_owned();
        }
    }
    panic!("this test needs Chromium: `apt-get install chromium` (or set CHROMIUM)");
}

/// The DOM of `url` after its scripts ran for a few (virtual) seconds.
fn rendered(url: &str) -> String {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=6000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journey_page_lists_requests_and_shows_a_timeline_in_chromium() {
    let cache = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_wayfinder"));
    command
        .args(["serve", "demo", "--port", "0", "--num-kv-blocks", "64"])
        .env("WAYFINDER_CACHE", cache.path());
    let (_server, line) = serve_ready_line(&mut command);
    let base = field(&line, "address=");
    let client = reqwest::Client::new();
    let mut ids = Vec::new();
    for prompt in ["the sea", "the wind"] {
        let reply: Value = client
            .post(format!("{base}/v1/completions"))
            .json(&json!({"model": "demo", "prompt": prompt, "max_tokens": 6}))
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        ids.push(reply["id"].as_str().expect("id").to_owned());
    }
    let url = format!("{base}/journeys#{}", ids[0]);
    let dom = tokio::task::spawn_blocking(move || rendered(&url))
        .await
        .expect("join");
    for id in &ids {
        assert!(
            dom.contains(&format!("data-id=\"{id}\"")),
            "{id} listed:\n{dom}"
        );
    }
    assert!(
        dom.contains("<ol id=\"events\">"),
        "the timeline is open:\n{dom}"
    );
    for event in [
        "arrived",
        "QUEUED",
        "SCHEDULED",
        "FIRST_TOKEN",
        "FINISHED",
        "departed",
    ] {
        assert!(
            dom.contains(&format!("data-event=\"{event}\"")),
            "{event}:\n{dom}"
        );
    }
    assert!(dom.contains("<svg id=\"timeline\""), "{dom}");
}
