//! What `bench serve` sends and when: random prompts, request bodies, Poisson arrival times
//! and W3C `traceparent`s.
//!
//! The server's tokenizer is unknown to the client, so a prompt of `--input-len` is that many
//! random common English words (about one token each for the usual BPE vocabularies); the
//! server's `usage.prompt_tokens` gives the real count. With `--shared-prefix-len N`, one
//! N-word prefix (a system prompt: the system message on the chat endpoint) comes before the
//! prompts of `--shared-prefix-ratio` of the requests, as chat traffic repeats its system
//! prompt, so that a server's prefix cache is measured. Everything drawn here comes from one
//! RNG seeded by `--seed`, so a run's prompts and arrival times can be repeated exactly — except
//! trace ids, which are fresh per run so that two runs never share a trace, and the shared
//! prefix, which is the same for every seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::Endpoint;

/// Words prompts are made of: short, common, and mostly one token in BPE vocabularies.
const WORDS: [&str; 64] = [
    "the", "server", "request", "token", "time", "day", "way", "path", "step", "queue", "model",
    "world", "water", "light", "house", "river", "city", "road", "stone", "tree", "blue", "green",
    "small", "large", "quick", "brown", "fox", "dog", "cat", "bird", "sun", "moon", "rain", "snow",
    "wind", "fire", "book", "page", "word", "line", "door", "room", "table", "chair", "hand",
    "head", "eye", "face", "name", "place", "work", "life", "year", "hour", "night", "morning",
    "answer", "question", "number", "story", "music", "garden", "window", "journey",
];

/// Seeds the shared prefix's words.
const SHARED_PREFIX_SEED: u64 = 0x05ee_d0f5_a4ed;

/// One benchmark request, ready to send.
#[derive(Debug, Clone)]
pub(super) struct PlannedRequest {
    /// The JSON body.
    pub(super) body: Value,
    /// Prompt length in words: the input count when the server reports no usage.
    pub(super) nominal_input: u64,
    /// `max_tokens`: the output count when the server reports no usage but `length`.
    pub(super) max_tokens: u64,
    /// Seconds after the start at which it is due.
    pub(super) arrival: f64,
    /// The `traceparent` header to send, with `--traceparent`.
    pub(super) traceparent: Option<Traceparent>,
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub(super) struct Workload {
    pub(super) endpoint: Endpoint,
    pub(super) model: String,
    pub(super) num_prompts: usize,
    pub(super) input_len: usize,
    /// Words of the shared prefix (0 for none).
    pub(super) shared_prefix_len: usize,
    /// The share of requests that start with it.
    pub(super) shared_prefix_ratio: f64,
    pub(super) output_len: u64,
    /// Requests per second; infinite sends everything at once.
    pub(super) request_rate: f64,
    pub(super) seed: u64,
    pub(super) traceparent: bool,
    /// Fields added to (or replacing those of) every body.
    pub(super) extra_body: Map<String, Value>,
}

impl Workload {
    /// Every request of the run, in sending order.
    pub(super) fn requests(&self) -> Vec<PlannedRequest> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let prompts: Vec<String> = (0..self.num_prompts)
            .map(|_| random_words(&mut rng, self.input_len))
            .collect();
        let arrivals = arrival_offsets(&mut rng, self.num_prompts, self.request_rate);
        // The prefix is the same whatever the seed, as one deployment's system prompt is the
        // same for all its traffic (so runs of several seeds share it); which requests carry it
        // comes from the seed, on a stream of its own so that the prompts and arrivals of a
        // seed stay those without a prefix.
        let prefix = random_words(
            &mut StdRng::seed_from_u64(SHARED_PREFIX_SEED),
            self.shared_prefix_len,
        );
        let mut prefix_rng = StdRng::seed_from_u64(self.seed ^ SHARED_PREFIX_SEED);
        let mut trace_rng = StdRng::from_os_rng();
        prompts
            .into_iter()
            .zip(arrivals)
            .map(|(prompt, arrival)| {
                let shared = self.shared_prefix_len > 0
                    && prefix_rng.random::<f64>() < self.shared_prefix_ratio;
                let prefix = shared.then_some(prefix.as_str());
                PlannedRequest {
                    body: self.body(prefix, &prompt),
                    nominal_input: (self.input_len
                        + if shared { self.shared_prefix_len } else { 0 })
                        as u64,
                    max_tokens: self.output_len,
                    arrival,
                    traceparent: self
                        .traceparent
                        .then(|| Traceparent::random(&mut trace_rng)),
                }
            })
            .collect()
    }

    /// The streaming request body of `prompt` after the shared `prefix`, if any, as
    /// `vllm bench serve` sends it: greedy, `max_tokens` = output length, `ignore_eos`, usage
    /// in the last chunk.
    pub(super) fn body(&self, prefix: Option<&str>, prompt: &str) -> Value {
        let mut body = json!({
            "model": self.model,
            "max_tokens": self.output_len,
            "temperature": 0.0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        match (self.endpoint, prefix) {
            (Endpoint::Completions, None) => body["prompt"] = json!(prompt),
            (Endpoint::Completions, Some(p)) => body["prompt"] = json!(format!("{p} {prompt}")),
            (Endpoint::Chat, None) => {
                body["messages"] = json!([{ "role": "user", "content": prompt }]);
            }
            (Endpoint::Chat, Some(p)) => {
                body["messages"] = json!([
                    { "role": "system", "content": p },
                    { "role": "user", "content": prompt },
                ]);
            }
        }
        if let Value::Object(fields) = &mut body {
            fields.extend(self.extra_body.clone());
        }
        body
    }
}

/// `n` words drawn from [`WORDS`], separated by spaces.
pub(super) fn random_words(rng: &mut StdRng, n: usize) -> String {
    let mut text = String::with_capacity(n * 6);
    for i in 0..n {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    text
}

/// Seconds after the start at which each of `n` requests is due: a Poisson process of `rate`
/// requests per second (exponential gaps; the first at 0), or all at 0 when `rate` is infinite.
pub(super) fn arrival_offsets(rng: &mut StdRng, n: usize, rate: f64) -> Vec<f64> {
    let mut t = 0.0;
    (0..n)
        .map(|i| {
            if i > 0 && rate.is_finite() {
                t += exponential(rng.random::<f64>(), rate);
            }
            t
        })
        .collect()
}

/// The exponential variate of rate `rate` at uniform `u` in [0, 1) (inverse transform).
pub(super) fn exponential(u: f64, rate: f64) -> f64 {
    -(1.0 - u).ln() / rate
}

/// A W3C trace context for one request: a new trace, sampled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Traceparent {
    /// 32 lowercase hex digits, never all zero.
    pub(super) trace_id: String,
    /// 16 lowercase hex digits, never all zero.
    pub(super) parent_id: String,
}

impl Traceparent {
    pub(super) fn random(rng: &mut StdRng) -> Self {
        let trace: u128 = rng.random_range(1..=u128::MAX);
        let span: u64 = rng.random_range(1..=u64::MAX);
        Self {
            trace_id: format!("{trace:032x}"),
            parent_id: format!("{span:016x}"),
        }
    }

    /// The header value: `00-{trace id}-{parent id}-01`.
    pub(super) fn header(&self) -> String {
        format!("00-{}-{}-01", self.trace_id, self.parent_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(endpoint: Endpoint) -> Workload {
        Workload {
            endpoint,
            model: "m".into(),
            num_prompts: 50,
            input_len: 12,
            shared_prefix_len: 0,
            shared_prefix_ratio: 1.0,
            output_len: 7,
            request_rate: 4.0,
            seed: 3,
            traceparent: true,
            extra_body: Map::new(),
        }
    }

    #[test]
    fn the_exponential_variate_is_the_inverse_of_its_distribution_function() {
        // P(X <= x) = 1 - exp(-rate x): at u = 1 - 1/e, x = 1/rate.
        let u = 1.0 - (-1.0f64).exp();
        assert!((exponential(u, 2.0) - 0.5).abs() < 1e-12);
        assert_eq!(exponential(0.0, 2.0), 0.0);
    }

    #[test]
    fn infinite_rate_sends_everything_at_once() {
        let mut rng = StdRng::seed_from_u64(0);
        assert_eq!(arrival_offsets(&mut rng, 3, f64::INFINITY), [0.0; 3]);
    }

    #[test]
    fn poisson_arrivals_start_at_zero_increase_and_average_the_rate() {
        let mut rng = StdRng::seed_from_u64(1);
        let t = arrival_offsets(&mut rng, 20_001, 5.0);
        assert_eq!(t[0], 0.0);
        assert!(t.windows(2).all(|w| w[1] >= w[0]));
        // 20,000 gaps of mean 0.2 s: the mean is within a few standard errors (0.0014).
        let mean_gap = t[20_000] / 20_000.0;
        assert!((mean_gap - 0.2).abs() < 0.01, "{mean_gap}");
    }

    #[test]
    fn the_same_seed_gives_the_same_prompts_and_arrivals_but_fresh_trace_ids() {
        let w = workload(Endpoint::Completions);
        let (a, b) = (w.requests(), w.requests());
        assert_eq!(a.len(), 50);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.body, y.body);
            assert_eq!(x.arrival, y.arrival);
            assert_ne!(x.traceparent, y.traceparent);
        }
        let words = a[0].body["prompt"].as_str().expect("a text prompt");
        assert_eq!(words.split(' ').count(), 12);
        assert_ne!(a[0].body["prompt"], a[1].body["prompt"]);
    }

    #[test]
    fn bodies_stream_greedily_with_usage_and_take_extra_fields() {
        let mut w = workload(Endpoint::Chat);
        w.extra_body = json!({ "min_tokens": 7, "temperature": 0.5 })
            .as_object()
            .cloned()
            .expect("an object");
        let body = w.body(None, "hello there");
        assert_eq!(body["messages"][0]["content"], "hello there");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["ignore_eos"], true);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["min_tokens"], 7);
        assert_eq!(body["temperature"], 0.5);
        assert!(body.get("prompt").is_none());
    }

    #[test]
    fn a_shared_prefix_starts_the_given_share_of_prompts_and_changes_nothing_else() {
        let plain = workload(Endpoint::Completions).requests();
        let mut w = workload(Endpoint::Completions);
        w.shared_prefix_len = 30;
        w.shared_prefix_ratio = 0.5;
        let shared = w.requests();
        let mut prefixes = std::collections::HashSet::new();
        let mut with = 0;
        for (p, s) in plain.iter().zip(&shared) {
            assert_eq!(p.arrival, s.arrival);
            let (p_text, s_text) = (
                p.body["prompt"].as_str().expect("text"),
                s.body["prompt"].as_str().expect("text"),
            );
            assert!(s_text.ends_with(p_text), "the prompt itself is unchanged");
            if s_text.len() > p_text.len() {
                with += 1;
                assert_eq!(s.nominal_input, 42);
                let words: Vec<&str> = s_text.split(' ').collect();
                prefixes.insert(words[..30].join(" "));
            } else {
                assert_eq!(s.nominal_input, 12);
            }
        }
        assert_eq!(prefixes.len(), 1, "one prefix for all");
        w.seed += 1;
        let other_seed = w.requests();
        let text = |r: &PlannedRequest| r.body["prompt"].as_str().expect("text").to_owned();
        let with_prefix = other_seed
            .iter()
            .map(text)
            .find(|t| t.split(' ').count() == 42);
        assert!(
            with_prefix.is_some_and(|t| prefixes.iter().all(|p| t.starts_with(p.as_str()))),
            "another seed, the same prefix"
        );
        assert!(
            (10..=40).contains(&with),
            "about half of 50 share it: {with}"
        );
        // On the chat endpoint the prefix is the system message.
        let mut w = workload(Endpoint::Chat);
        w.shared_prefix_len = 5;
        let first = &w.requests()[0].body;
        assert_eq!(first["messages"][0]["role"], "system");
        assert_eq!(
            first["messages"][0]["content"]
                .as_str()
                .map(|p| p.split(' ').count()),
            Some(5)
        );
        assert_eq!(first["messages"][1]["role"], "user");
    }

    #[test]
    fn traceparents_are_w3c_version_00_and_sampled() {
        let mut rng = StdRng::seed_from_u64(9);
        let t = Traceparent::random(&mut rng);
        let header = t.header();
        let parts: Vec<&str> = header.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1].len(), 32);
        assert_eq!(parts[2].len(), 16);
        assert_eq!(parts[3], "01");
        assert!(parts[1..3].iter().all(|p| {
            p.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        }));
        assert_ne!(t, Traceparent::random(&mut rng));
    }
}
