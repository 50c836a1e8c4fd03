//! Wire requests → validated engine requests, in one place.
//!
//! [`chat`] and [`completion`] check everything a client can get wrong (model, ranges,
//! unsupported features, context length), render and tokenize the prompt, and build one
//! [`EngineRequest`] per choice with [`EngineRequest::builder`]. Whatever fails here is a 4xx and
//! never reaches the engine.

use wayfinder_core::request::MAX_TOP_LOGPROBS;
use wayfinder_core::{EngineRequest, SamplingParams, StopConditions};
use wayfinder_text::{ChatMessage, StopMatcher};

use crate::error::ApiError;
use crate::state::{AppState, unix_now};
use crate::wire::{
    ChatCompletionRequest, CompletionRequest, MessageContent, PromptIn, SamplingFields, StopSpec,
};

/// The most choices (`n`) per prompt.
pub const MAX_N: i64 = 16;
/// The most choices one request may ask for, over all its prompts.
pub const MAX_CHOICES: usize = 256;
/// The most stop strings per request (OpenAI allows 4).
pub(crate) const MAX_STOPS: usize = 64;
/// The longest stop string, in bytes.
pub(crate) const MAX_STOP_BYTES: usize = 1024;

/// A request that passed validation: everything [`crate::generation`] needs.
#[derive(Debug)]
pub(crate) struct ValidRequest {
    /// Unix seconds.
    pub(crate) created: u64,
    /// The served model's name.
    pub(crate) model: String,
    /// One per choice, in `index` order.
    pub(crate) choices: Vec<ChoiceSpec>,
    /// Prompt tokens, each distinct prompt counted once.
    pub(crate) prompt_tokens: usize,
    /// Stream over SSE.
    pub(crate) stream: bool,
    /// Send a usage chunk at the end of the stream.
    pub(crate) include_usage: bool,
    /// Logprobs asked for, with this many alternatives.
    pub(crate) logprobs: Option<u32>,
    /// Choices per prompt.
    pub(crate) n: usize,
    /// The client's seed, when given.
    pub(crate) seed: Option<i64>,
    /// The temperature in force, exactly as the client sent it (or the default as written).
    pub(crate) temperature: f64,
    /// The top-p in force, exactly as the client sent it (or the default as written).
    pub(crate) top_p: f64,
}

/// An `f32` default (from `generation_config.json`) as the number written there: its shortest
/// decimal form, so `0.7` records as 0.7 and not 0.699999988079071.
fn as_written(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// One choice: its engine request and the stop strings to look for in its text.
#[derive(Debug)]
pub(crate) struct ChoiceSpec {
    /// The choice's `index`.
    pub(crate) index: u32,
    /// The engine request (id `{response id}-{index}`).
    pub(crate) request: EngineRequest,
    /// The stop strings, compiled once per request (clones share them).
    pub(crate) stop: StopMatcher,
    /// With `echo`: the prompt's text, which the choice's text starts with.
    pub(crate) echo: Option<String>,
}

/// One prompt to build choices for: its token ids and, with `echo`, its text.
struct Prompt {
    ids: Vec<u32>,
    echo: Option<String>,
}

impl Prompt {
    fn plain(ids: Vec<u32>) -> Self {
        Self { ids, echo: None }
    }
}

/// What a request asks of logprobs: of sampled tokens, and (`echo`) of the prompt's.
#[derive(Clone, Copy, Default)]
struct LogprobsAsked {
    sampled: Option<u32>,
    prompt: Option<u32>,
}

/// Validates a chat request with response id `id` that arrived at `arrival` (monotonic
/// seconds).
pub(crate) fn chat(
    state: &AppState,
    req: &ChatCompletionRequest,
    id: &str,
    arrival: f64,
) -> Result<ValidRequest, ApiError> {
    check_model(state, &req.model)?;
    refuse_tools(req)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "must not be empty"));
    }
    let messages = req
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            Ok(ChatMessage::new(
                m.role.clone(),
                message_text(i, m.content.as_ref())?,
            ))
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "needs `logprobs` set to true",
            ));
        }
        (false, None) => None,
        (true, top) => Some(top_logprobs("top_logprobs", top.unwrap_or(0))?),
    };
    let content_bytes: usize = messages.iter().map(|m| m.content.len()).sum();
    refuse_unfittable(state, "messages", content_bytes)?;
    let text = state.chat_template().render(&messages, true).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("cannot be rendered by the chat template: {e}"),
        )
    })?;
    let prompt = state.tokenizer().encode(&text, false)?;
    let max_tokens = req.max_completion_tokens.or(req.sampling.max_tokens);
    let asked = LogprobsAsked {
        sampled: logprobs,
        prompt: None,
    };
    build(
        state,
        id,
        vec![Prompt::plain(prompt)],
        max_tokens,
        &req.sampling,
        asked,
        arrival,
    )
}

/// Validates a completion request with response id `id` that arrived at `arrival`
/// (monotonic seconds).
pub(crate) fn completion(
    state: &AppState,
    req: CompletionRequest,
    id: &str,
    arrival: f64,
) -> Result<ValidRequest, ApiError> {
    check_model(state, &req.model)?;
    let echo = req.echo.unwrap_or(false);
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported("suffix", "`suffix` is not supported"));
    }
    if req
        .best_of
        .is_some_and(|b| b != req.sampling.n.unwrap_or(1))
    {
        return Err(ApiError::unsupported(
            "best_of",
            "`best_of` other than `n` is not supported",
        ));
    }
    let logprobs = req
        .logprobs
        .map(|n| top_logprobs("logprobs", n))
        .transpose()?;
    let tokenizer = state.tokenizer();
    let text = |t: String| -> Result<Prompt, ApiError> {
        refuse_unfittable(state, "prompt", t.len())?;
        let ids = tokenizer.encode(&t, true)?;
        Ok(Prompt {
            ids,
            echo: echo.then_some(t),
        })
    };
    let mut prompts = match req.prompt {
        PromptIn::Text(t) => vec![text(t)?],
        PromptIn::Texts(ts) => ts.into_iter().map(text).collect::<Result<_, _>>()?,
        PromptIn::Tokens(ids) => vec![Prompt::plain(ids)],
        PromptIn::TokenLists(lists) => lists.into_iter().map(Prompt::plain).collect(),
    };
    if prompts.is_empty() {
        return Err(ApiError::invalid("prompt", "must not be empty"));
    }
    let vocab = tokenizer.vocab_size();
    if let Some(bad) = prompts
        .iter()
        .flat_map(|p| &p.ids)
        .find(|&&t| t as usize >= vocab)
    {
        return Err(ApiError::invalid(
            "prompt",
            format!("has token id {bad}, outside the vocabulary of {vocab} tokens"),
        ));
    }
    if echo {
        for p in prompts.iter_mut().filter(|p| p.echo.is_none()) {
            p.echo = Some(tokenizer.decode(&p.ids, false)?);
        }
    }
    let max_tokens = req.sampling.max_tokens;
    if max_tokens == Some(0) && !echo {
        return Err(ApiError::invalid(
            "max_tokens",
            "must be at least 1 (0 only with `echo`, to score the prompt)",
        ));
    }
    // The engine computes the prompt's logprobs when they are shown, and when it is to
    // generate nothing (its request is then about the prompt alone).
    let asked = LogprobsAsked {
        sampled: logprobs,
        prompt: (echo && (logprobs.is_some() || max_tokens == Some(0)))
            .then(|| logprobs.unwrap_or(0)),
    };
    build(
        state,
        id,
        prompts,
        max_tokens,
        &req.sampling,
        asked,
        arrival,
    )
}

/// Refuses text too long to fit in the context whatever it tokenizes to, before paying for
/// tokenizing it.
fn refuse_unfittable(state: &AppState, param: &'static str, bytes: usize) -> Result<(), ApiError> {
    let max_len = state.max_model_len();
    if state.tokenizer().cannot_fit(bytes, max_len) {
        return Err(ApiError::ContextLength(format!(
            "this model's maximum context length is {max_len} tokens, and `{param}` has \
             {bytes} bytes of text, far more than that many tokens can hold"
        )));
    }
    Ok(())
}

fn check_model(state: &AppState, model: &str) -> Result<(), ApiError> {
    if model == state.model_name() {
        Ok(())
    } else {
        Err(ApiError::ModelNotFound(model.to_owned()))
    }
}

fn refuse_tools(req: &ChatCompletionRequest) -> Result<(), ApiError> {
    let set = |v: &Option<serde_json::Value>| {
        v.as_ref().is_some_and(|v| match v {
            serde_json::Value::Null => false,
            serde_json::Value::Array(a) => !a.is_empty(),
            _ => true,
        })
    };
    if set(&req.tools) {
        return Err(ApiError::unsupported("tools", "tools are not supported"));
    }
    if set(&req.functions) {
        return Err(ApiError::unsupported(
            "functions",
            "functions are not supported",
        ));
    }
    if let Some(choice) = &req.tool_choice
        && !(choice.is_null() || choice == "none")
    {
        return Err(ApiError::unsupported(
            "tool_choice",
            "tool_choice other than `none` is not supported",
        ));
    }
    if let Some(format) = &req.response_format
        && !(format.is_null() || format.get("type").is_some_and(|t| t == "text"))
    {
        return Err(ApiError::unsupported(
            "response_format",
            "response_format other than `text` is not supported",
        ));
    }
    Ok(())
}

/// The text of message `i`: its string, or its text parts joined by newlines.
fn message_text(i: usize, content: Option<&MessageContent>) -> Result<String, ApiError> {
    match content {
        None => Ok(String::new()),
        Some(MessageContent::Text(t)) => Ok(t.clone()),
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(t)) => texts.push(t.as_str()),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content"),
                            "has a text part without `text`",
                        ));
                    }
                    (other, _) => {
                        return Err(ApiError::unsupported(
                            format!("messages[{i}].content"),
                            format!(
                                "content parts of type `{other}` are not supported; only `text`"
                            ),
                        ));
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

fn top_logprobs(param: &'static str, n: i64) -> Result<u32, ApiError> {
    u32::try_from(n)
        .ok()
        .filter(|&n| n <= MAX_TOP_LOGPROBS)
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                format!("must be in [0, {MAX_TOP_LOGPROBS}], got {n}"),
            )
        })
}

/// The request's stop strings, within [`MAX_STOPS`] and [`MAX_STOP_BYTES`], compiled.
fn stop_matcher(stop: Option<&StopSpec>) -> Result<StopMatcher, ApiError> {
    let stops = match stop {
        None => Vec::new(),
        Some(StopSpec::One(s)) => vec![s.clone()],
        Some(StopSpec::Many(v)) => v.clone(),
    };
    if stops.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "has {} strings; at most {MAX_STOPS} are accepted",
                stops.len()
            ),
        ));
    }
    if let Some(long) = stops.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "has a string of {} bytes; each may have at most {MAX_STOP_BYTES}",
                long.len()
            ),
        ));
    }
    Ok(StopMatcher::new(stops))
}

/// Checks the shared fields and builds `n` engine requests per prompt.
fn build(
    state: &AppState,
    id: &str,
    prompts: Vec<Prompt>,
    max_tokens: Option<i64>,
    fields: &SamplingFields,
    asked: LogprobsAsked,
    arrival: f64,
) -> Result<ValidRequest, ApiError> {
    let logprobs = asked.sampled;
    let n = fields.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return Err(ApiError::invalid(
            "n",
            format!("must be in [1, {MAX_N}], got {n}"),
        ));
    }
    let n = n as usize;
    if prompts.len() * n > MAX_CHOICES {
        return Err(ApiError::invalid(
            "prompt",
            format!("asks for more than {MAX_CHOICES} choices (prompts × n)"),
        ));
    }
    // 0 only for a request that scores its prompt.
    let least = if asked.prompt.is_some() { 0 } else { 1 };
    if let Some(m) = max_tokens
        && m < least
    {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("must be at least {least}, got {m}"),
        ));
    }
    let top_k = match fields.top_k {
        None => state.sampling_defaults().top_k,
        Some(-1) => 0,
        Some(k) => u32::try_from(k).map_err(|_| {
            ApiError::invalid("top_k", format!("must be -1, 0 (off) or positive, got {k}"))
        })?,
    };
    let defaults = state.sampling_defaults();
    let sampling = SamplingParams {
        // The sampler works in f32; the journey records the request's own f64 (below).
        temperature: fields
            .temperature
            .map_or(defaults.temperature, |t| t as f32),
        top_p: fields.top_p.map_or(defaults.top_p, |p| p as f32),
        top_k,
        min_p: fields.min_p.unwrap_or(defaults.min_p),
        seed: fields.seed.map(|s| s as u64),
        presence_penalty: fields.presence_penalty.unwrap_or(defaults.presence_penalty),
        frequency_penalty: fields
            .frequency_penalty
            .unwrap_or(defaults.frequency_penalty),
        repetition_penalty: fields
            .repetition_penalty
            .unwrap_or(defaults.repetition_penalty),
        logprobs,
        prompt_logprobs: asked.prompt,
    };
    let stop = stop_matcher(fields.stop.as_ref())?;
    let max_len = state.max_model_len();
    let mut choices = Vec::with_capacity(prompts.len() * n);
    let mut prompt_tokens = 0;
    for Prompt { ids: prompt, echo } in prompts {
        let len = prompt.len();
        if len == 0 {
            return Err(ApiError::invalid("prompt", "must not be empty"));
        }
        if len > max_len || (len == max_len && max_tokens != Some(0)) {
            return Err(ApiError::ContextLength(format!(
                "this model's maximum context length is {max_len} tokens, and the prompt has \
                 {len}; no room is left for output"
            )));
        }
        let max_tokens = match max_tokens {
            None => max_len - len,
            Some(m) if (len as i64).saturating_add(m) > max_len as i64 => {
                return Err(ApiError::ContextLength(format!(
                    "this model's maximum context length is {max_len} tokens; the prompt has \
                     {len} and {m} more were asked for ({} in all)",
                    len as i128 + i128::from(m)
                )));
            }
            Some(m) => m as usize,
        };
        prompt_tokens += len;
        for i in 0..n {
            let index = choices.len();
            let sampling = SamplingParams {
                seed: sampling.seed.map(|s| s.wrapping_add(i as u64)),
                ..sampling.clone()
            };
            let request = EngineRequest::builder(format!("{id}-{index}"), prompt.clone())
                .sampling(sampling)
                .stop(StopConditions {
                    max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
                    stop_token_ids: Vec::new(),
                    ignore_eos: fields.ignore_eos.unwrap_or(false),
                })
                .arrival_time(arrival)
                .journey(state.history().is_on())
                .cache_salt(fields.cache_salt.clone())
                .build()?;
            choices.push(ChoiceSpec {
                index: index as u32,
                request,
                stop: stop.clone(),
                echo: echo.clone(),
            });
        }
    }
    Ok(ValidRequest {
        created: unix_now(),
        model: state.model_name().to_owned(),
        choices,
        prompt_tokens,
        stream: fields.stream.unwrap_or(false),
        include_usage: fields
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        logprobs,
        n,
        seed: fields.seed,
        temperature: fields
            .temperature
            .unwrap_or_else(|| as_written(defaults.temperature)),
        top_p: fields.top_p.unwrap_or_else(|| as_written(defaults.top_p)),
    })
}
