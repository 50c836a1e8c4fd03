//! The run's report: the text summary `vllm bench serve` users know, and the `--result-json`
//! document (settings, summary, and every request with its trace id).

use std::fmt::{Display, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::client::RequestResult;
use super::stats::Summary;
use super::workload::Workload;

/// Width of the label column.
const LABEL: usize = 40;

/// The text summary of a run.
pub(super) fn text(
    summary: &Summary,
    workload: &Workload,
    max_concurrency: Option<usize>,
) -> String {
    let mut out = String::new();
    title(&mut out, "Serving Benchmark Result", '=');
    line(&mut out, "Successful requests:", summary.completed);
    line(&mut out, "Failed requests:", summary.failed);
    for (reason, count) in &summary.failures {
        line(&mut out, &format!("  {reason}:"), count);
    }
    let concurrency = max_concurrency.map_or_else(|| "unlimited".to_owned(), |c| c.to_string());
    line(&mut out, "Maximum request concurrency:", concurrency);
    line(
        &mut out,
        "Request rate (req/s):",
        rate(workload.request_rate),
    );
    if workload.shared_prefix_len > 0 {
        let share = workload.shared_prefix_ratio;
        line(
            &mut out,
            "Shared prefix (words):",
            format!(
                "{} on {:.0}% of requests",
                workload.shared_prefix_len,
                share * 100.0
            ),
        );
    }
    let d = summary.duration_s;
    line(&mut out, "Benchmark duration (s):", format!("{d:.2}"));
    line(&mut out, "Total input tokens:", summary.total_input_tokens);
    if let Some(cached) = summary.total_cached_input_tokens {
        line(&mut out, "  of them cached:", cached);
    }
    line(
        &mut out,
        "Total generated tokens:",
        summary.total_output_tokens,
    );
    let rates = [
        ("Request throughput (req/s):", summary.request_throughput),
        (
            "Output token throughput (tok/s):",
            summary.output_throughput,
        ),
        (
            "Total token throughput (tok/s):",
            summary.total_token_throughput,
        ),
    ];
    for (label, r) in rates {
        line(&mut out, label, format!("{r:.2}"));
    }
    let sections = [
        ("Time to First Token", "TTFT", summary.ttft),
        (
            "Time per Output Token (excl. 1st token)",
            "TPOT",
            summary.tpot,
        ),
        ("Inter-token Latency", "ITL", summary.itl),
        ("End-to-end Latency", "E2EL", summary.e2el),
    ];
    for (name, short, dist) in sections {
        title(&mut out, name, '-');
        match dist {
            Some(d) => {
                let values = [
                    ("Mean", d.mean_ms),
                    ("Median", d.median_ms),
                    ("P90", d.p90_ms),
                    ("P99", d.p99_ms),
                ];
                for (stat, v) in values {
                    line(
                        &mut out,
                        &format!("{stat} {short} (ms):"),
                        format!("{v:.2}"),
                    );
                }
            }
            None => line(&mut out, &format!("{short} (ms):"), "-"),
        }
    }
    let _ = writeln!(out, "{}", "=".repeat(50));
    out
}

fn line(out: &mut String, label: &str, value: impl Display) {
    let _ = writeln!(out, "{label:<LABEL$} {value}");
}

/// ` title ` centred in a 50-character rule of `fill`.
fn title(out: &mut String, title: &str, fill: char) {
    let text = format!(" {title} ");
    let pad = 50usize.saturating_sub(text.chars().count());
    let rule = |n: usize| fill.to_string().repeat(n);
    let _ = writeln!(out, "{}{text}{}", rule(pad / 2), rule(pad - pad / 2));
}

fn rate(r: f64) -> String {
    if r.is_finite() {
        format!("{r}")
    } else {
        "inf".to_owned()
    }
}

/// The `--result-json` document.
pub(super) fn json(
    summary: &Summary,
    workload: &Workload,
    base_url: &str,
    max_concurrency: Option<usize>,
    results: &[RequestResult],
) -> Value {
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let requests: Vec<Value> = results
        .iter()
        .map(|r| {
            let mut v = match &r.outcome {
                Ok(s) => json!({
                    "ok": true,
                    "ttft_s": s.ttft,
                    "latency_s": s.latency,
                    "itl_s": s.itl,
                    "prompt_tokens": s.prompt_tokens,
                    "output_tokens": s.output_tokens,
                    "cached_tokens": s.cached_tokens,
                }),
                Err(f) => json!({
                    "ok": false,
                    "error": f.kind.to_string(),
                    "detail": f.detail,
                }),
            };
            v["sent_at_s"] = json!(r.sent_at);
            v["trace_id"] = json!(r.trace_id);
            v
        })
        .collect();
    json!({
        "unix_time": unix_time,
        "settings": {
            "base_url": base_url,
            "endpoint": workload.endpoint.path(),
            "model": workload.model,
            "num_prompts": workload.num_prompts,
            "request_rate": rate(workload.request_rate),
            "max_concurrency": max_concurrency,
            "input_len": workload.input_len,
            "shared_prefix_len": workload.shared_prefix_len,
            "shared_prefix_ratio": workload.shared_prefix_ratio,
            "output_len": workload.output_len,
            "seed": workload.seed,
            "traceparent": workload.traceparent,
            "extra_body": workload.extra_body,
        },
        "summary": summary,
        "requests": requests,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::Map;

    use super::super::Endpoint;
    use super::super::client::{Failure, FailureKind, Success};
    use super::*;

    fn workload() -> Workload {
        Workload {
            endpoint: Endpoint::Chat,
            model: "m".into(),
            num_prompts: 2,
            input_len: 3,
            shared_prefix_len: 0,
            shared_prefix_ratio: 1.0,
            output_len: 2,
            request_rate: f64::INFINITY,
            seed: 0,
            traceparent: true,
            extra_body: Map::new(),
        }
    }

    fn results() -> Vec<RequestResult> {
        vec![
            RequestResult {
                outcome: Ok(Success {
                    ttft: 0.01,
                    itl: vec![0.02],
                    latency: 0.03,
                    prompt_tokens: 3,
                    output_tokens: 2,
                    cached_tokens: None,
                }),
                sent_at: 0.0,
                trace_id: Some("ab".repeat(16)),
            },
            RequestResult {
                outcome: Err(Failure {
                    kind: FailureKind::Status(503),
                    detail: "overloaded".into(),
                }),
                sent_at: 0.0,
                trace_id: Some("cd".repeat(16)),
            },
        ]
    }

    #[test]
    fn the_text_lists_counts_failures_by_reason_and_each_distribution() {
        let summary = Summary::new(&results(), 1.0);
        let text = text(&summary, &workload(), Some(4));
        for expected in [
            "Successful requests:                     1",
            "Failed requests:                         1",
            "  HTTP 503:                              1",
            "Maximum request concurrency:             4",
            "Request rate (req/s):                    inf",
            "Output token throughput (tok/s):         2.00",
            "Mean TTFT (ms):                          10.00",
            "P99 TPOT (ms):                           20.00",
            "Median ITL (ms):                         20.00",
            "P90 E2EL (ms):                           30.00",
        ] {
            assert!(text.contains(expected), "{expected:?} not in\n{text}");
        }
    }

    #[test]
    fn the_json_has_the_settings_summary_and_every_request_with_its_trace_id() {
        let results = results();
        let summary = Summary::new(&results, 1.0);
        let doc = json(&summary, &workload(), "http://h:1", None, &results);
        assert_eq!(doc["settings"]["endpoint"], "/v1/chat/completions");
        assert_eq!(doc["settings"]["request_rate"], "inf");
        assert_eq!(doc["summary"]["completed"], 1);
        assert_eq!(doc["summary"]["ttft"]["median_ms"], 10.0);
        let mut failures = BTreeMap::new();
        failures.insert("HTTP 503".to_owned(), 1);
        assert_eq!(doc["summary"]["failures"], json!(failures));
        let requests = doc["requests"].as_array().expect("an array");
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0]["output_tokens"], 2);
        assert_eq!(requests[1]["error"], "HTTP 503");
        assert_eq!(requests[1]["detail"], "overloaded");
        assert_eq!(requests[1]["trace_id"], "cd".repeat(16));
    }
}
