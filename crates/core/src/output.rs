//! What the engine sends back on a request's own output stream.
//!
//! For a request that asked for its prompt's logprobs, first [`RequestOutput::PromptLogprobs`]
//! for prompt tokens 1, 2, … in order, in one or more pieces as its prefill proceeds; then zero
//! or more [`RequestOutput::Token`]s as they are sampled, then exactly one
//! [`RequestOutput::Finished`], then the stream ends.

use crate::journey::JourneyMark;
use crate::sampling::TokenLogprobs;
use crate::sequence::{FinishStatus, RequestTimestamps, Sequence};

/// Prompt and completion token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub cached_tokens: usize,
}

/// One sampled token.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TokenOutput {
    /// The token id.
    pub token_id: u32,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
}

/// The end of a request.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FinishedOutput {
    /// How it ended.
    pub status: FinishStatus,
    /// Token counts.
    pub usage: Usage,
    /// Its monotonic timestamps.
    pub timestamps: RequestTimestamps,
    /// Preemptions it went through.
    pub num_preemptions: u32,
    /// Why, for `error` (and for rejections such as a duplicate request id).
    pub error: Option<String>,
    /// Its journey marks in order, when it asked for them ([`crate::RequestBuilder::journey`]).
    #[cfg_attr(feature = "serde", serde(default))]
    pub journey: Vec<JourneyMark>,
    /// Prompt tokens looked up in the prefix cache (0 when the cache is off or the request was
    /// never scheduled); `usage.cached_tokens` of them were found.
    #[cfg_attr(feature = "serde", serde(default))]
    pub prefix_cache_queries: usize,
}

impl FinishedOutput {
    pub(crate) fn of(seq: &Sequence, status: FinishStatus, error: Option<String>) -> Self {
        Self {
            status,
            usage: Usage {
                prompt_tokens: seq.num_prompt_tokens(),
                completion_tokens: seq.num_output_tokens(),
                cached_tokens: seq.num_cached_tokens(),
            },
            timestamps: *seq.timestamps(),
            num_preemptions: seq.num_preemptions(),
            error,
            journey: Vec::new(),
            prefix_cache_queries: seq.num_prefix_cache_queries(),
        }
    }
}

/// An item on a request's output stream.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RequestOutput {
    /// The logprobs of the next prompt tokens (the first piece starts at prompt token 1, the
    /// first token having no context to be predicted from), each with its top alternatives.
    PromptLogprobs(Vec<TokenLogprobs>),
    /// A token, as soon as it is sampled.
    Token(TokenOutput),
    /// The final item.
    Finished(FinishedOutput),
}
