//! The OpenAI wire format: request and response DTOs, exactly as they travel. No logic here;
//! `validation.rs` turns requests into engine requests.
//!
//! Unknown request fields are ignored (serde's default). Fields the server refuses when set
//! (`tools`, `response_format`, …) are kept as raw JSON so that validation can name them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a final chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The sampling fields shared by both endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    /// Output token limit.
    pub max_tokens: Option<i64>,
    /// Sampling temperature, [0, 2].
    pub temperature: Option<f64>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f64>,
    /// Top-k; 0 or -1 disables it.
    pub top_k: Option<i64>,
    /// Min-p, [0, 1].
    pub min_p: Option<f32>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<StopSpec>,
    /// Sampling seed.
    pub seed: Option<i64>,
    /// OpenAI presence penalty.
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Multiplicative repetition penalty.
    pub repetition_penalty: Option<f32>,
    /// Keep generating past end-of-sequence.
    pub ignore_eos: Option<bool>,
    /// vLLM's prefix-cache salt: cached blocks are shared only among requests with the same.
    pub cache_salt: Option<String>,
    /// Stream over SSE.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    /// The served model's name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<ChatMessageIn>,
    /// The newer name of `max_tokens`.
    pub max_completion_tokens: Option<i64>,
    /// Return logprobs of the sampled tokens.
    pub logprobs: Option<bool>,
    /// Top alternatives per token, [0, 20]; needs `logprobs`.
    pub top_logprobs: Option<i64>,
    /// Refused when set.
    pub tools: Option<Value>,
    /// Refused unless `none`.
    pub tool_choice: Option<Value>,
    /// Refused when set (the legacy `tools`).
    pub functions: Option<Value>,
    /// Refused unless `{"type": "text"}`.
    pub response_format: Option<Value>,
    /// Everything shared with completions.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `user`, `assistant`, …
    pub role: String,
    /// A string or an array of content parts; may be null for assistant messages.
    #[serde(default)]
    pub content: Option<MessageContent>,
}

/// A message's content.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `{"type": "text", "text": …}` is supported.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// `text`, `image_url`, `input_audio`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The served model's name.
    pub model: String,
    /// The prompt(s).
    pub prompt: PromptIn,
    /// Logprobs of the sampled token and this many alternatives, [0, 20].
    pub logprobs: Option<i64>,
    /// Start each choice's text with its prompt (and its logprobs with the prompt's).
    pub echo: Option<bool>,
    /// Refused when set.
    pub suffix: Option<String>,
    /// Refused when above `n`.
    pub best_of: Option<i64>,
    /// Everything shared with chat.
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt`: text or token ids, one prompt or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    /// One text prompt.
    Text(String),
    /// One prompt of token ids.
    Tokens(Vec<u32>),
    /// Several text prompts.
    Texts(Vec<String>),
    /// Several prompts of token ids.
    TokenLists(Vec<Vec<u32>>),
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageOut {
    /// Prompt tokens (each distinct prompt once).
    pub prompt_tokens: usize,
    /// Generated tokens, over every choice.
    pub completion_tokens: usize,
    /// Their sum.
    pub total_tokens: usize,
    /// What OpenAI details of the prompt tokens.
    #[serde(default)]
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose KV came from the prefix cache (each distinct prompt once: for `n`
    /// choices of one prompt, the most any of them found).
    pub cached_tokens: usize,
}

/// A chat response message, or a streamed delta of one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatMessageOut {
    /// `assistant` (only in the first chunk when streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// The text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One token's logprob in chat format.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<ChatTopLogprob>>,
}

/// One alternative in chat format.
#[derive(Debug, Clone, Serialize)]
pub struct ChatTopLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f32,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// `logprobs` of a chat choice.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// A chat choice (complete).
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoice {
    /// The choice's position.
    pub index: u32,
    /// The reply.
    pub message: ChatMessageOut,
    /// Present when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// `stop` or `length`.
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per `n`.
    pub choices: Vec<ChatChoice>,
    /// Token counts.
    pub usage: UsageOut,
}

/// A chat chunk's choice.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChunkChoice {
    /// The choice's position.
    pub index: u32,
    /// The new text (and the role, first).
    pub delta: ChatMessageOut,
    /// Present when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<&'static str>,
}

/// `chat.completion.chunk`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// The same id in every chunk.
    pub id: String,
    /// `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// Empty in the usage chunk.
    pub choices: Vec<ChatChunkChoice>,
    /// Only in the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// `logprobs` of a completion choice (the legacy format).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompletionLogprobs {
    /// Token texts.
    pub tokens: Vec<String>,
    /// Their log-probabilities (null for an echoed prompt's first token).
    pub token_logprobs: Vec<Option<f32>>,
    /// Per token, alternative text → log-probability (null where the logprob is).
    pub top_logprobs: Vec<Option<serde_json::Map<String, Value>>>,
    /// Per token, its byte offset in the choice's text.
    pub text_offset: Vec<usize>,
}

/// A completion choice, complete or streamed.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionChoice {
    /// The choice's position.
    pub index: u32,
    /// The text (a delta when streaming).
    pub text: String,
    /// Present when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null until the end.
    pub finish_reason: Option<&'static str>,
}

/// `text_completion`, complete or a streamed chunk.
#[derive(Debug, Clone, Serialize)]
pub struct CompletionResponse {
    /// `cmpl-…`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The served model name.
    pub model: String,
    /// One per prompt × `n`.
    pub choices: Vec<CompletionChoice>,
    /// Token counts (always when complete; only in the usage chunk when streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageOut>,
}

/// One entry of `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    /// The served model name.
    pub id: String,
    /// `model`.
    pub object: &'static str,
    /// Unix seconds at startup.
    pub created: u64,
    /// `wayfinder`.
    pub owned_by: &'static str,
    /// The longest request, prompt plus output.
    pub max_model_len: usize,
}

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    /// `list`.
    pub object: &'static str,
    /// The one served model.
    pub data: Vec<ModelCard>,
}
