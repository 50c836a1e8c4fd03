//! The arithmetic of the summary, as pure functions: percentiles by linear interpolation
//! (numpy's default), the distributions of TTFT, TPOT, ITL and end-to-end latency, and the
//! throughputs over the run's duration — the definitions of `vllm bench serve`.
//!
//! - TPOT of a request: `(latency − ttft) / (output_tokens − 1)`, for requests with more than
//!   one output token.
//! - ITL: every gap between content chunks of every completed request, pooled.
//! - Request throughput: completed requests / duration; output: output tokens / duration;
//!   total: (input + output tokens) / duration; tokens of completed requests only.

use std::collections::BTreeMap;

use serde::Serialize;

use super::client::{RequestResult, Success};

/// The `p`-th percentile (0–100) of `sorted` (ascending), linearly interpolated between the
/// two nearest ranks as numpy's `percentile` does by default; `None` when empty.
pub(super) fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let rank = p.clamp(0.0, 100.0) / 100.0 * last as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// Mean, median, p90 and p99 of a set of values, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(super) struct Distribution {
    pub(super) mean_ms: f64,
    pub(super) median_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
}

impl Distribution {
    /// The distribution of `seconds` (any order); `None` when empty.
    pub(super) fn of_seconds(seconds: &[f64]) -> Option<Self> {
        let mut ms: Vec<f64> = seconds.iter().map(|s| s * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let mean = ms.iter().sum::<f64>() / ms.len() as f64;
        Some(Self {
            mean_ms: mean,
            median_ms: percentile(&ms, 50.0)?,
            p90_ms: percentile(&ms, 90.0)?,
            p99_ms: percentile(&ms, 99.0)?,
        })
    }
}

/// A request's time per output token after the first; `None` with one output token or none.
pub(super) fn tpot(s: &Success) -> Option<f64> {
    (s.output_tokens > 1).then(|| (s.latency - s.ttft) / (s.output_tokens - 1) as f64)
}

/// `count` per second over `duration` seconds (0 for an empty duration).
pub(super) fn per_second(count: f64, duration: f64) -> f64 {
    if duration > 0.0 {
        count / duration
    } else {
        0.0
    }
}

/// What a run measured, as printed and as written to `--result-json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(super) struct Summary {
    pub(super) completed: usize,
    pub(super) failed: usize,
    /// Failed requests by reason.
    pub(super) failures: BTreeMap<String, usize>,
    pub(super) duration_s: f64,
    pub(super) total_input_tokens: u64,
    /// Input tokens the server said it read from its prefix cache (`None` when it said nothing).
    pub(super) total_cached_input_tokens: Option<u64>,
    pub(super) total_output_tokens: u64,
    pub(super) request_throughput: f64,
    pub(super) output_throughput: f64,
    pub(super) total_token_throughput: f64,
    pub(super) ttft: Option<Distribution>,
    pub(super) tpot: Option<Distribution>,
    pub(super) itl: Option<Distribution>,
    pub(super) e2el: Option<Distribution>,
}

impl Summary {
    /// The summary of `results` from a run of `duration` seconds.
    pub(super) fn new(results: &[RequestResult], duration: f64) -> Self {
        let ok: Vec<&Success> = results
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok())
            .collect();
        let mut failures = BTreeMap::new();
        for failure in results.iter().filter_map(|r| r.outcome.as_ref().err()) {
            *failures.entry(failure.kind.to_string()).or_insert(0) += 1;
        }
        let input: u64 = ok.iter().map(|s| s.prompt_tokens).sum();
        let cached = ok
            .iter()
            .filter_map(|s| s.cached_tokens)
            .fold(None, |sum, c| Some(sum.unwrap_or(0) + c));
        let output: u64 = ok.iter().map(|s| s.output_tokens).sum();
        let collect = |f: fn(&Success) -> Option<f64>| ok.iter().filter_map(|s| f(s)).collect();
        let ttfts: Vec<f64> = collect(|s| Some(s.ttft));
        let tpots: Vec<f64> = collect(tpot);
        let e2els: Vec<f64> = collect(|s| Some(s.latency));
        let itls: Vec<f64> = ok.iter().flat_map(|s| s.itl.iter().copied()).collect();
        Self {
            completed: ok.len(),
            failed: results.len() - ok.len(),
            failures,
            duration_s: duration,
            total_input_tokens: input,
            total_cached_input_tokens: cached,
            total_output_tokens: output,
            request_throughput: per_second(ok.len() as f64, duration),
            output_throughput: per_second(output as f64, duration),
            total_token_throughput: per_second((input + output) as f64, duration),
            ttft: Distribution::of_seconds(&ttfts),
            tpot: Distribution::of_seconds(&tpots),
            itl: Distribution::of_seconds(&itls),
            e2el: Distribution::of_seconds(&e2els),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::{Failure, FailureKind};
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn percentiles_interpolate_linearly_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        // rank = p/100 × (n − 1): 1.5, 2.7 and 2.97.
        assert_eq!(percentile(&v, 50.0), Some(2.5));
        assert!(close(percentile(&v, 90.0).expect("some"), 3.7));
        assert!(close(percentile(&v, 99.0).expect("some"), 3.97));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        // An odd count's median is its middle value; one value is every percentile.
        assert_eq!(percentile(&[10.0, 20.0, 40.0], 50.0), Some(20.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // numpy.percentile(range(1, 11), 90) == 9.1 and (…, 99) == 9.91.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!(close(percentile(&ten, 90.0).expect("some"), 9.1));
        assert!(close(percentile(&ten, 99.0).expect("some"), 9.91));
    }

    #[test]
    fn a_distribution_sorts_and_reports_milliseconds() {
        let d = Distribution::of_seconds(&[0.004, 0.001, 0.003, 0.002]).expect("values");
        assert!(close(d.mean_ms, 2.5));
        assert!(close(d.median_ms, 2.5));
        assert!(close(d.p90_ms, 3.7));
        assert!(close(d.p99_ms, 3.97));
        assert_eq!(Distribution::of_seconds(&[]), None);
    }

    fn ok(ttft: f64, latency: f64, output_tokens: u64, itl: &[f64]) -> RequestResult {
        RequestResult {
            outcome: Ok(Success {
                ttft,
                itl: itl.to_vec(),
                latency,
                prompt_tokens: 10,
                output_tokens,
                cached_tokens: Some(output_tokens / 5),
            }),
            sent_at: 0.0,
            trace_id: None,
        }
    }

    fn failed(kind: FailureKind) -> RequestResult {
        RequestResult {
            outcome: Err(Failure {
                kind,
                detail: String::new(),
            }),
            sent_at: 0.0,
            trace_id: None,
        }
    }

    #[test]
    fn tpot_is_the_time_after_the_first_token_per_later_token() {
        let r = ok(0.1, 1.0, 10, &[]);
        let s = r.outcome.as_ref().expect("ok");
        assert!(close(tpot(s).expect("more than one token"), 0.1));
        let one = ok(0.1, 0.1, 1, &[]);
        assert_eq!(tpot(one.outcome.as_ref().expect("ok")), None);
    }

    #[test]
    fn the_summary_counts_throughputs_over_the_duration_and_failures_by_reason() {
        let results = [
            ok(0.1, 0.5, 5, &[0.1, 0.1, 0.1, 0.1]),
            ok(0.2, 1.2, 11, &[0.1; 10]),
            ok(0.3, 0.3, 1, &[]),
            failed(FailureKind::Status(500)),
            failed(FailureKind::NoDone),
            failed(FailureKind::Status(500)),
        ];
        let s = Summary::new(&results, 2.0);
        assert_eq!((s.completed, s.failed), (3, 3));
        assert_eq!(s.failures["HTTP 500"], 2);
        assert_eq!(s.failures["stream ended without [DONE]"], 1);
        assert_eq!((s.total_input_tokens, s.total_output_tokens), (30, 17));
        assert_eq!(s.total_cached_input_tokens, Some(3), "1 + 2 + 0");
        assert!(close(s.request_throughput, 1.5));
        assert!(close(s.output_throughput, 8.5));
        assert!(close(s.total_token_throughput, 23.5));
        let ttft = s.ttft.expect("completed requests");
        assert!(close(ttft.mean_ms, 200.0) && close(ttft.median_ms, 200.0));
        // TPOTs: 0.4 / 4 = 0.1 and 1.0 / 10 = 0.1; the one-token request has none.
        let tpot = s.tpot.expect("requests of several tokens");
        assert!(close(tpot.mean_ms, 100.0) && close(tpot.p99_ms, 100.0));
        // 14 gaps of 0.1 s, pooled.
        assert!(close(s.itl.expect("gaps").median_ms, 100.0));
        // Latencies 0.3, 0.5, 1.2: median 0.5, p90 at rank 1.8 = 0.5 + 0.8 × 0.7.
        let e2el = s.e2el.expect("completed requests");
        assert!(close(e2el.median_ms, 500.0));
        assert!(close(e2el.p90_ms, 1060.0));
        assert!(close(e2el.mean_ms, 2000.0 / 3.0));
    }

    #[test]
    fn a_run_where_everything_failed_has_no_latencies() {
        let s = Summary::new(&[failed(FailureKind::Connection)], 0.0);
        assert_eq!((s.completed, s.failed), (0, 1));
        assert_eq!(s.request_throughput, 0.0);
        assert_eq!((s.ttft, s.tpot, s.itl, s.e2el), (None, None, None, None));
    }
}
