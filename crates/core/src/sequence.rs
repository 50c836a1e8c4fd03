//! A request inside the engine: its tokens, progress, state and timestamps.
//!
//! ```text
//!            schedule                    finish (stop, length, abort, error)
//! WAITING ─────────────▶ RUNNING ───────────────────────────────▶ FINISHED
//!                         │   ▲
//!                 preempt │   │ schedule (RESUME)
//!                         ▼   │
//!                       PREEMPTED ─── abort ──▶ FINISHED
//! ```
//! A request whose prompt can never fit goes straight from WAITING to FINISHED(`ignored`).
//!
//! Preemption is by recompute: a preempted sequence gives up its KV blocks and, when resumed,
//! prefills its prompt *and* the tokens it had generated, then continues decoding — except for
//! the leading full blocks still in the prefix cache, which it takes back without computing.

use crate::block_hash::BlockHash;
use crate::request::{Carrier, EngineRequest, Priority, SamplingParams, StopConditions};

/// The most tokens of a request that still owes prompt logprobs computed in one step (each
/// returns a full logits row).
pub const MAX_PROMPT_LOGITS_TOKENS_PER_STEP: usize = 512;

/// The engine's own handle for a request, unique for the engine's lifetime (request ids chosen
/// by clients need not be).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SeqId(pub u64);

/// Where a request is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// Queued, never scheduled.
    Waiting,
    /// In the running set.
    Running,
    /// Taken off the running set; waits to resume (ahead of new arrivals).
    Preempted,
    /// Done; holds no KV blocks.
    Finished(FinishStatus),
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum FinishStatus {
    /// A stop token or end-of-sequence token was generated (or a stop string matched upstream).
    Stopped,
    /// `max_tokens` or the model's context length was reached.
    Length,
    /// Aborted by the client, by a dropped output stream, or by shutdown.
    Aborted,
    /// The prompt can never fit (context length or KV capacity); nothing was computed.
    Ignored,
    /// The executor failed.
    Error,
}

impl FinishStatus {
    /// The contract's name (`finish.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stopped => "stopped",
            Self::Length => "length",
            Self::Aborted => "aborted",
            Self::Ignored => "ignored",
            Self::Error => "error",
        }
    }
}

/// The phase of a request, as journey events report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Not in the running set.
    Waiting,
    /// Running, computing prompt tokens (or recomputing after preemption).
    Prefill,
    /// Running, generating one token per step.
    Decode,
}

impl Phase {
    /// The contract's name (`phase`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "WAITING",
            Self::Prefill => "PREFILL",
            Self::Decode => "DECODE",
        }
    }
}

/// A request's timestamps, in seconds on [`crate::clock`]'s monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RequestTimestamps {
    /// When the request arrived (set by whoever built it, usually the API layer).
    pub arrival: f64,
    /// When the engine accepted it.
    pub queued: f64,
    /// When it was first scheduled.
    pub first_scheduled: Option<f64>,
    /// When its first output token was sampled.
    pub first_token: Option<f64>,
    /// When its latest output token was sampled.
    pub last_token: Option<f64>,
    /// When it finished.
    pub finished: Option<f64>,
}

/// A request inside the engine.
#[derive(Debug)]
pub struct Sequence {
    id: SeqId,
    request_id: String,
    /// Prompt followed by output tokens.
    pub(crate) tokens: Vec<u32>,
    num_prompt_tokens: usize,
    sampling: SamplingParams,
    stop: StopConditions,
    priority: Priority,
    carrier: Carrier,
    pub(crate) status: RequestStatus,
    /// Tokens whose KV is in the cache.
    pub(crate) num_computed_tokens: usize,
    /// The most prompt tokens ever computed; survives preemption.
    prefill_high_water: usize,
    pub(crate) num_preemptions: u32,
    /// The next prompt position whose logprob is owed (see [`Sequence::prompt_logits_rows`]);
    /// survives preemption, so that recomputing never sends one twice.
    prompt_logprobs_next: usize,
    /// Admission order into the scheduler; "latest arrival" means the largest.
    pub(crate) arrival_order: u64,
    pub(crate) times: RequestTimestamps,
    /// Chained content hashes of its full blocks so far (kept by the scheduler when the prefix
    /// cache is on), from `cache_root` (which its cache salt chose).
    pub(crate) block_hashes: Vec<BlockHash>,
    pub(crate) cache_root: BlockHash,
    /// Prompt tokens looked up in the prefix cache and found there when first scheduled.
    prefix_cache_lookup: Option<(usize, usize)>,
}

impl Sequence {
    pub(crate) fn new(id: SeqId, mut request: EngineRequest, arrival_order: u64, now: f64) -> Self {
        let carrier = request.take_carrier();
        let arrival = request.arrival_time();
        let priority = request.priority();
        let (request_id, prompt, sampling, stop) = request.into_parts();
        Self {
            id,
            request_id,
            num_prompt_tokens: prompt.len(),
            tokens: prompt,
            sampling,
            stop,
            priority,
            carrier,
            status: RequestStatus::Waiting,
            num_computed_tokens: 0,
            prefill_high_water: 0,
            num_preemptions: 0,
            prompt_logprobs_next: 1,
            arrival_order,
            times: RequestTimestamps {
                arrival,
                queued: now,
                ..RequestTimestamps::default()
            },
            block_hashes: Vec::new(),
            cache_root: BlockHash(0),
            prefix_cache_lookup: None,
        }
    }

    /// The engine's id for this request.
    pub fn id(&self) -> SeqId {
        self.id
    }
    /// The client's request id.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }
    /// Prompt then output tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
    /// The prompt.
    pub fn prompt(&self) -> &[u32] {
        &self.tokens[..self.num_prompt_tokens]
    }
    /// The output so far.
    pub fn output(&self) -> &[u32] {
        &self.tokens[self.num_prompt_tokens..]
    }
    /// Prompt length.
    pub fn num_prompt_tokens(&self) -> usize {
        self.num_prompt_tokens
    }
    /// Output length.
    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.num_prompt_tokens
    }
    /// Tokens whose KV is in the cache.
    pub fn num_computed_tokens(&self) -> usize {
        self.num_computed_tokens
    }
    /// Known tokens not yet in the cache (the next step's work for this request).
    pub fn num_pending_tokens(&self) -> usize {
        self.tokens.len() - self.num_computed_tokens
    }
    /// This step's tokens for it, given `budget` left in the step.
    pub fn step_tokens(&self, budget: usize) -> usize {
        self.num_pending_tokens()
            .min(budget)
            .min(self.max_step_tokens())
    }
    /// Prompt tokens the prefix cache supplied when it was first scheduled (0 when none, or
    /// before then).
    pub fn num_cached_tokens(&self) -> usize {
        self.prefix_cache_lookup.map_or(0, |(_, hit)| hit)
    }
    /// Prompt tokens looked up in the prefix cache when it was first scheduled (0 when the
    /// cache is off, or the request could not use it).
    pub fn num_prefix_cache_queries(&self) -> usize {
        self.prefix_cache_lookup.map_or(0, |(queried, _)| queried)
    }
    /// The most leading tokens whose KV may come from the prefix cache: all but the last
    /// known token (whose logits give the next), and none whose prompt logprob is still owed.
    pub fn max_cache_hit_tokens(&self) -> usize {
        let known = self.tokens.len().saturating_sub(1);
        if self.sampling.prompt_logprobs.is_some() {
            // Row `p` gives token `p + 1`'s logprob: rows from `prompt_logprobs_next - 1` on
            // must be computed.
            known.min(self.prompt_logprobs_next - 1)
        } else {
            known
        }
    }
    /// Prompt tokens computed so far, as a high-water mark that survives preemption.
    pub fn prefill_done_tokens(&self) -> usize {
        self.prefill_high_water
    }
    /// Sampling parameters.
    pub fn sampling(&self) -> &SamplingParams {
        &self.sampling
    }
    /// Stop conditions.
    pub fn stop(&self) -> &StopConditions {
        &self.stop
    }
    /// Priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }
    /// The trace-context carrier (empty when the engine has no observer).
    pub fn carrier(&self) -> &Carrier {
        &self.carrier
    }
    /// Lifecycle state.
    pub fn status(&self) -> RequestStatus {
        self.status
    }
    /// How it ended, once it has.
    pub fn finish_status(&self) -> Option<FinishStatus> {
        match self.status {
            RequestStatus::Finished(status) => Some(status),
            _ => None,
        }
    }
    /// Preemptions so far.
    pub fn num_preemptions(&self) -> u32 {
        self.num_preemptions
    }
    /// Timestamps so far.
    pub fn timestamps(&self) -> &RequestTimestamps {
        &self.times
    }

    /// The output limit: `max_tokens`, or less when the context length binds first.
    pub fn max_output_tokens(&self, max_model_len: usize) -> usize {
        (self.stop.max_tokens as usize).min(max_model_len.saturating_sub(self.num_prompt_tokens))
    }

    /// The most tokens one step computes for this request: bounded while prompt logits are
    /// owed, as each of those tokens takes a row of vocabulary size.
    pub fn max_step_tokens(&self) -> usize {
        if self.owes_prompt_logprobs() {
            MAX_PROMPT_LOGITS_TOKENS_PER_STEP
        } else {
            usize::MAX
        }
    }

    /// Whether some prompt token's logprob has not been sent yet.
    pub fn owes_prompt_logprobs(&self) -> bool {
        self.sampling.prompt_logprobs.is_some()
            && self.prompt_logprobs_next < self.num_prompt_tokens
    }

    /// For a step computing positions `range`, the positions whose logits rows give a prompt
    /// logprob still owed: row `p` gives token `p + 1`'s.
    pub fn prompt_logits_rows(&self, range: std::ops::Range<usize>) -> std::ops::Range<usize> {
        if self.sampling.prompt_logprobs.is_none() {
            return range.start..range.start;
        }
        let start = range.start.max(self.prompt_logprobs_next - 1);
        let end = range.end.min(self.num_prompt_tokens - 1);
        start..end.max(start)
    }

    /// Records that prompt logprobs were sent up to token `next` (exclusive).
    pub(crate) fn sent_prompt_logprobs(&mut self, next: usize) {
        self.prompt_logprobs_next = self.prompt_logprobs_next.max(next);
    }

    /// The phase as journey events report it.
    pub fn phase(&self) -> Phase {
        match self.status {
            RequestStatus::Running => {
                // Decoding feeds exactly the last sampled token; anything more is (re)prefill.
                let decode_pending = usize::from(self.num_output_tokens() > 0);
                if self.num_pending_tokens() > decode_pending {
                    Phase::Prefill
                } else {
                    Phase::Decode
                }
            }
            RequestStatus::Finished(_) if self.num_output_tokens() > 0 => Phase::Decode,
            RequestStatus::Finished(_) if self.num_computed_tokens > 0 => Phase::Prefill,
            _ => Phase::Waiting,
        }
    }

    /// Records that its first `cached` tokens' KV came from the prefix cache as it was
    /// scheduled, after a lookup of `queried` tokens; the first lookup is what it reports.
    pub(crate) fn start_from_cache(&mut self, queried: usize, cached: usize) {
        debug_assert!(self.num_computed_tokens == 0 && cached <= self.max_cache_hit_tokens());
        self.prefix_cache_lookup
            .get_or_insert((queried, cached.min(self.num_prompt_tokens)));
        self.advance(cached);
    }

    /// Records that `n` more tokens were computed in a step.
    pub(crate) fn advance(&mut self, n: usize) {
        self.num_computed_tokens += n;
        debug_assert!(self.num_computed_tokens <= self.tokens.len());
        self.prefill_high_water = self
            .prefill_high_water
            .max(self.num_computed_tokens.min(self.num_prompt_tokens));
    }

    /// Appends a sampled token; returns the finish status it causes, if any.
    pub(crate) fn append_token(
        &mut self,
        token: u32,
        eos_token_ids: &[u32],
        max_model_len: usize,
        now: f64,
    ) -> Option<FinishStatus> {
        self.tokens.push(token);
        self.times.first_token.get_or_insert(now);
        self.times.last_token = Some(now);
        if (!self.stop.ignore_eos && eos_token_ids.contains(&token))
            || self.stop.stop_token_ids.contains(&token)
        {
            Some(FinishStatus::Stopped)
        } else if self.num_output_tokens() >= self.max_output_tokens(max_model_len) {
            Some(FinishStatus::Length)
        } else {
            None
        }
    }

    /// Drops the KV progress (the blocks are freed by the caller) and counts the preemption.
    pub(crate) fn preempt(&mut self) {
        self.status = RequestStatus::Preempted;
        self.num_computed_tokens = 0;
        self.num_preemptions += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(prompt: Vec<u32>, max_tokens: u32) -> Sequence {
        let req = EngineRequest::builder("r", prompt)
            .max_tokens(max_tokens)
            .arrival_time(1.0)
            .build()
            .expect("valid");
        Sequence::new(SeqId(0), req, 0, 2.0)
    }

    #[test]
    fn phases_follow_progress() {
        let mut s = seq(vec![1, 2, 3], 4);
        assert_eq!(s.phase(), Phase::Waiting);
        s.status = RequestStatus::Running;
        assert_eq!(s.phase(), Phase::Prefill);
        s.advance(3);
        assert_eq!(s.append_token(9, &[], 100, 3.0), None);
        assert_eq!(s.phase(), Phase::Decode);
        s.preempt();
        assert_eq!(s.phase(), Phase::Waiting);
        s.status = RequestStatus::Running;
        assert_eq!(s.phase(), Phase::Prefill, "recompute is prefill");
        assert_eq!(s.prefill_done_tokens(), 3, "high-water survives preemption");
    }

    #[test]
    fn stops_on_eos_stop_token_and_length() {
        let mut s = seq(vec![1], 3);
        assert_eq!(s.append_token(5, &[2], 100, 1.0), None);
        assert_eq!(
            s.append_token(2, &[2], 100, 1.0),
            Some(FinishStatus::Stopped)
        );
        let mut s = seq(vec![1], 3);
        s.stop.ignore_eos = true;
        s.stop.stop_token_ids = vec![7];
        assert_eq!(s.append_token(2, &[2], 100, 1.0), None);
        assert_eq!(
            s.append_token(7, &[2], 100, 1.0),
            Some(FinishStatus::Stopped)
        );
        let mut s = seq(vec![1], 2);
        assert_eq!(s.append_token(3, &[], 100, 1.0), None);
        assert_eq!(s.append_token(3, &[], 100, 1.0), Some(FinishStatus::Length));
        // The context length binds before max_tokens.
        let mut s = seq(vec![1, 1, 1], 10);
        assert_eq!(s.max_output_tokens(4), 1);
        assert_eq!(s.append_token(3, &[], 4, 1.0), Some(FinishStatus::Length));
        assert_eq!(s.timestamps().first_token, Some(1.0));
    }
}
