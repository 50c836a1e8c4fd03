//! Validated engine requests.
//!
//! The engine accepts only [`EngineRequest`], and the only way to make one is
//! [`EngineRequest::builder`] → [`RequestBuilder::build`], which checks every field. Whatever
//! parses wire formats (the HTTP layer) turns its DTOs into a `RequestBuilder` in one place; the
//! engine never re-validates.

use std::collections::HashMap;

use crate::clock::monotonic_now;

/// Opaque trace-context carrier (W3C `traceparent`, `tracestate`, sampling flag, …).
///
/// The engine never reads it: it passes it untouched to its journey observer.
pub type Carrier = HashMap<String, String>;

/// Scheduling priority. Lower values are scheduled first (as in vLLM); only the priority policy
/// looks at it.
pub type Priority = i32;

/// A request rejected by validation: which field, and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{param}`: {message}")]
pub struct InvalidRequest {
    /// The offending field, named as in the OpenAI API where one exists.
    pub param: &'static str,
    /// A human-readable explanation.
    pub message: String,
}

impl InvalidRequest {
    fn new(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            param,
            message: message.into(),
        }
    }
}

/// How the next token is chosen from the logits. See [`crate::sampling`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus sampling mass, in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Keep only the `k` most likely tokens; 0 disables it.
    pub top_k: u32,
    /// Drop tokens whose probability is below `min_p` × the top probability; 0 disables it.
    pub min_p: f32,
    /// Per-request seed; the same seed and inputs give the same tokens.
    pub seed: Option<u64>,
    /// OpenAI presence penalty over the output tokens, in [-2, 2].
    pub presence_penalty: f32,
    /// OpenAI frequency penalty over the output tokens, in [-2, 2].
    pub frequency_penalty: f32,
    /// Multiplicative (CTRL / Hugging Face) penalty over prompt and output tokens; 1 disables it.
    pub repetition_penalty: f32,
    /// Return the log-probability of each sampled token and this many top alternatives.
    pub logprobs: Option<u32>,
    /// Return the log-probability of each prompt token after the first (given the tokens before
    /// it) and this many top alternatives, as [`crate::RequestOutput::PromptLogprobs`] before any
    /// sampled token. With it, `max_tokens` may be 0: the request ends after its prefill.
    #[cfg_attr(feature = "serde", serde(default))]
    pub prompt_logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Whether this samples deterministically without randomness.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= GREEDY_TEMPERATURE
    }

    fn validate(&self) -> Result<(), InvalidRequest> {
        let finite_in = |v: f32, lo: f32, hi: f32| v.is_finite() && (lo..=hi).contains(&v);
        if !finite_in(self.temperature, 0.0, 2.0) {
            return Err(InvalidRequest::new(
                "temperature",
                format!("must be in [0, 2], got {}", self.temperature),
            ));
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(InvalidRequest::new(
                "top_p",
                format!("must be in (0, 1], got {}", self.top_p),
            ));
        }
        if !finite_in(self.min_p, 0.0, 1.0) {
            return Err(InvalidRequest::new(
                "min_p",
                format!("must be in [0, 1], got {}", self.min_p),
            ));
        }
        for (param, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !finite_in(v, -2.0, 2.0) {
                return Err(InvalidRequest::new(
                    param,
                    format!("must be in [-2, 2], got {v}"),
                ));
            }
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(InvalidRequest::new(
                "repetition_penalty",
                format!("must be > 0, got {}", self.repetition_penalty),
            ));
        }
        for (param, n) in [
            ("top_logprobs", self.logprobs),
            ("prompt_logprobs", self.prompt_logprobs),
        ] {
            if let Some(n) = n
                && n > MAX_TOP_LOGPROBS
            {
                return Err(InvalidRequest::new(
                    param,
                    format!("must be at most {MAX_TOP_LOGPROBS}, got {n}"),
                ));
            }
        }
        Ok(())
    }
}

/// Temperatures at or below this are treated as greedy.
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// The most top alternatives a request may ask for per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// When generation ends, besides the engine's own limits (context length, model eos).
#[derive(Debug, Clone, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StopConditions {
    /// The most tokens to generate: at least 1, or 0 for a request that only asks for its
    /// prompt's logprobs ([`SamplingParams::prompt_logprobs`]).
    pub max_tokens: u32,
    /// Extra token ids that end generation with status `stopped`.
    pub stop_token_ids: Vec<u32>,
    /// Keep generating past the model's end-of-sequence tokens.
    pub ignore_eos: bool,
}

/// A validated generation request, ready for the engine.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    id: String,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    stop: StopConditions,
    priority: Priority,
    arrival_time: f64,
    carrier: Carrier,
    journey: bool,
    cache_salt: Option<String>,
}

/// The longest [`RequestBuilder::cache_salt`], in bytes.
pub const MAX_CACHE_SALT_BYTES: usize = 256;

impl EngineRequest {
    /// Starts a request with the given id and prompt token ids; see [`RequestBuilder`].
    pub fn builder(id: impl Into<String>, prompt: Vec<u32>) -> RequestBuilder {
        RequestBuilder {
            id: id.into(),
            prompt,
            sampling: SamplingParams::default(),
            stop: StopConditions {
                max_tokens: 16,
                ..StopConditions::default()
            },
            priority: 0,
            arrival_time: None,
            carrier: Carrier::new(),
            journey: false,
            cache_salt: None,
        }
    }

    /// The caller's request id, unique among live requests of one engine.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The prompt's token ids (never empty).
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }
    /// Sampling parameters.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }
    /// Stop conditions.
    pub fn stop(&self) -> &StopConditions {
        &self.stop
    }
    /// Scheduling priority (lower first, under the priority policy).
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// When the request arrived, on the monotonic clock of [`crate::clock`].
    pub fn arrival_time(&self) -> f64 {
        self.arrival_time
    }
    /// The trace-context carrier handed to the journey observer.
    pub fn carrier(&self) -> &Carrier {
        &self.carrier
    }
    /// Whether its journey marks come back in its `Finished` output.
    pub fn wants_journey(&self) -> bool {
        self.journey
    }
    /// Its prefix-cache salt: it shares cached blocks only with requests of the same salt.
    pub fn cache_salt(&self) -> Option<&str> {
        self.cache_salt.as_deref()
    }
    /// Replaces the trace-context carrier (the API layer injects its span's context).
    pub fn set_carrier(&mut self, carrier: Carrier) {
        self.carrier = carrier;
    }
    pub(crate) fn take_carrier(&mut self) -> Carrier {
        std::mem::take(&mut self.carrier)
    }
    pub(crate) fn into_parts(self) -> (String, Vec<u32>, SamplingParams, StopConditions) {
        (self.id, self.prompt, self.sampling, self.stop)
    }
}

/// Builds and validates an [`EngineRequest`].
#[derive(Debug, Clone)]
pub struct RequestBuilder {
    id: String,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    stop: StopConditions,
    priority: Priority,
    arrival_time: Option<f64>,
    carrier: Carrier,
    journey: bool,
    cache_salt: Option<String>,
}

impl RequestBuilder {
    /// Sets the sampling parameters.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }
    /// Sets the stop conditions.
    pub fn stop(mut self, stop: StopConditions) -> Self {
        self.stop = stop;
        self
    }
    /// Sets only `max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u32) -> Self {
        self.stop.max_tokens = max_tokens;
        self
    }
    /// Sets the priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
    /// Sets the arrival time (monotonic seconds); defaults to the time of `build`.
    pub fn arrival_time(mut self, t: f64) -> Self {
        self.arrival_time = Some(t);
        self
    }
    /// Sets the trace-context carrier.
    pub fn carrier(mut self, carrier: Carrier) -> Self {
        self.carrier = carrier;
        self
    }
    /// Asks for the request's journey marks in its `Finished` output (for a journey history).
    pub fn journey(mut self, journey: bool) -> Self {
        self.journey = journey;
        self
    }

    /// Salts the request's prefix-cache keys (vLLM's `cache_salt`): it then reads and leaves
    /// cached blocks only among requests with the same salt, so that tenants given different
    /// salts cannot learn from timing whether another's prompt was cached. Non-empty, at most
    /// [`MAX_CACHE_SALT_BYTES`].
    pub fn cache_salt(mut self, salt: Option<String>) -> Self {
        self.cache_salt = salt;
        self
    }

    /// Checks every field and returns the engine request.
    pub fn build(self) -> Result<EngineRequest, InvalidRequest> {
        if self.id.is_empty() {
            return Err(InvalidRequest::new("request_id", "must not be empty"));
        }
        if self.prompt.is_empty() {
            return Err(InvalidRequest::new("prompt", "must not be empty"));
        }
        if self.stop.max_tokens < 1 && self.sampling.prompt_logprobs.is_none() {
            return Err(InvalidRequest::new(
                "max_tokens",
                "must be at least 1 (0 only when the prompt's logprobs are asked for)",
            ));
        }
        self.sampling.validate()?;
        if let Some(salt) = &self.cache_salt
            && (salt.is_empty() || salt.len() > MAX_CACHE_SALT_BYTES)
        {
            return Err(InvalidRequest::new(
                "cache_salt",
                format!("must be a non-empty string of at most {MAX_CACHE_SALT_BYTES} bytes"),
            ));
        }
        let arrival_time = match self.arrival_time {
            Some(t) if !t.is_finite() => {
                return Err(InvalidRequest::new("arrival_time", "must be finite"));
            }
            Some(t) => t,
            None => monotonic_now(),
        };
        Ok(EngineRequest {
            id: self.id,
            prompt: self.prompt,
            sampling: self.sampling,
            stop: self.stop,
            priority: self.priority,
            arrival_time,
            carrier: self.carrier,
            journey: self.journey,
            cache_salt: self.cache_salt,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(sampling: SamplingParams) -> Result<EngineRequest, InvalidRequest> {
        EngineRequest::builder("r", vec![1, 2])
            .sampling(sampling)
            .build()
    }

    #[test]
    fn valid_request_keeps_its_fields() {
        let mut carrier = Carrier::new();
        carrier.insert("traceparent".into(), "x".into());
        let req = EngineRequest::builder("req-1", vec![5, 6, 7])
            .max_tokens(9)
            .priority(-3)
            .arrival_time(1.5)
            .carrier(carrier.clone())
            .build()
            .expect("valid");
        assert_eq!(req.id(), "req-1");
        assert_eq!(req.prompt(), &[5, 6, 7]);
        assert_eq!(req.stop().max_tokens, 9);
        assert_eq!(req.priority(), -3);
        assert_eq!(req.arrival_time(), 1.5);
        assert_eq!(req.carrier(), &carrier);
    }

    #[test]
    fn rejects_each_bad_field_by_name() {
        let bad = |r: Result<EngineRequest, InvalidRequest>| r.expect_err("must fail").param;
        assert_eq!(
            bad(EngineRequest::builder("", vec![1]).build()),
            "request_id"
        );
        assert_eq!(bad(EngineRequest::builder("r", vec![]).build()), "prompt");
        assert_eq!(
            bad(EngineRequest::builder("r", vec![1]).max_tokens(0).build()),
            "max_tokens"
        );
        let p = SamplingParams::default;
        for (sampling, param) in [
            (
                SamplingParams {
                    temperature: -0.1,
                    ..p()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: 2.1,
                    ..p()
                },
                "temperature",
            ),
            (
                SamplingParams {
                    temperature: f32::NAN,
                    ..p()
                },
                "temperature",
            ),
            (SamplingParams { top_p: 0.0, ..p() }, "top_p"),
            (SamplingParams { top_p: 1.01, ..p() }, "top_p"),
            (SamplingParams { min_p: 1.5, ..p() }, "min_p"),
            (
                SamplingParams {
                    presence_penalty: 2.5,
                    ..p()
                },
                "presence_penalty",
            ),
            (
                SamplingParams {
                    frequency_penalty: -3.0,
                    ..p()
                },
                "frequency_penalty",
            ),
            (
                SamplingParams {
                    repetition_penalty: 0.0,
                    ..p()
                },
                "repetition_penalty",
            ),
            (
                SamplingParams {
                    logprobs: Some(21),
                    ..p()
                },
                "top_logprobs",
            ),
            (
                SamplingParams {
                    prompt_logprobs: Some(21),
                    ..p()
                },
                "prompt_logprobs",
            ),
        ] {
            assert_eq!(bad(with(sampling)), param);
        }
    }

    #[test]
    fn boundary_values_are_accepted() {
        let p = SamplingParams::default;
        for sampling in [
            SamplingParams {
                temperature: 0.0,
                ..p()
            },
            SamplingParams {
                temperature: 2.0,
                ..p()
            },
            SamplingParams { top_p: 1.0, ..p() },
            SamplingParams { min_p: 1.0, ..p() },
            SamplingParams {
                presence_penalty: -2.0,
                ..p()
            },
            SamplingParams {
                logprobs: Some(20),
                ..p()
            },
        ] {
            with(sampling).expect("boundary value is valid");
        }
    }

    #[test]
    fn max_tokens_zero_needs_prompt_logprobs() {
        let prompt_only = SamplingParams {
            prompt_logprobs: Some(0),
            ..SamplingParams::default()
        };
        let req = EngineRequest::builder("r", vec![1, 2])
            .sampling(prompt_only)
            .max_tokens(0)
            .build()
            .expect("a prompt-logprobs request may generate nothing");
        assert_eq!(req.stop().max_tokens, 0);
    }
}
