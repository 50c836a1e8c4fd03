//! One API request in flight: its `n` engine requests fanned out and merged back, text out of
//! tokens, stop strings, logprobs, usage, and the request's [`Journey`].
//!
//! A [`Generation`] owns the engine's [`wayfinder_core::RequestStream`]s, the in-flight permit
//! and the journey. Whoever holds it (the handler future, or the SSE body stream) dropping it —
//! a client that went away — aborts every engine request, frees their KV blocks, and ends the
//! journey with `client_disconnect` unless it departed or failed first.

use std::pin::Pin;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use wayfinder_core::{EngineError, FinishStatus, RequestOutput, TokenOutput};
use wayfinder_model::stop::StopMatcher;
use wayfinder_model::tokenizer::IncrementalDetokenizer;

use crate::error::ApiError;
use crate::journey::{Journey, RequestLog};
use crate::state::AppState;
use crate::validation::ValidRequest;
use crate::wire::UsageOut;

/// What one step of a [`Generation`] produced for one choice.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Delta {
    /// The choice's index.
    pub(crate) index: u32,
    /// New text (possibly empty).
    pub(crate) text: String,
    /// The tokens behind it, when logprobs were asked for.
    pub(crate) tokens: Vec<TokenInfo>,
    /// Set on the choice's last delta: `stop` or `length`.
    pub(crate) finish_reason: Option<&'static str>,
}

/// A generated token with its logprob and alternatives, in text form.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TokenInfo {
    /// The token's text.
    pub(crate) text: String,
    /// Its log-probability.
    pub(crate) logprob: f32,
    /// The most likely alternatives.
    pub(crate) top: Vec<(String, f32)>,
    /// Byte offset of the token in the choice's text.
    pub(crate) offset: usize,
}

/// A whole choice, for non-streaming responses.
#[derive(Debug, Clone, Default)]
pub(crate) struct CollectedChoice {
    /// The choice's index.
    pub(crate) index: u32,
    /// The text.
    pub(crate) text: String,
    /// Token logprobs, when asked for.
    pub(crate) tokens: Vec<TokenInfo>,
    /// `stop` or `length`.
    pub(crate) finish_reason: Option<&'static str>,
}

type OutputStream = Pin<Box<dyn Stream<Item = (usize, RequestOutput)> + Send>>;

/// How long a traced request's span waits, after the response, for the engine timestamps of
/// choices ended by a stop string (see [`Generation::depart`]).
const ENGINE_TIMES_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An API request in flight; see the module docs.
pub(crate) struct Generation {
    state: AppState,
    choices: Vec<Choice>,
    outputs: SelectAll<OutputStream>,
    prompt_tokens: usize,
    logprobs: bool,
    model: String,
    journey: Journey,
    /// When the request runs out of time, and the limit (`Limits::request_timeout`).
    deadline: Option<(tokio::time::Instant, std::time::Duration)>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("id", &self.journey.id())
            .field("choices", &self.choices.len())
            .finish_non_exhaustive()
    }
}

struct Choice {
    index: u32,
    engine_id: String,
    detok: IncrementalDetokenizer,
    stop: StopMatcher,
    finish: Option<&'static str>,
    /// The engine's `Finished` for this choice came back (its timestamps are in the journey).
    engine_done: bool,
    completion_tokens: usize,
    text_len: usize,
}

impl Generation {
    /// Admits the request (or 429) and hands its engine requests to the engine, each with the
    /// journey's trace carrier. On failure the journey records it.
    pub(crate) fn start(
        state: &AppState,
        valid: ValidRequest,
        mut journey: Journey,
    ) -> Result<Self, ApiError> {
        journey.validated(&valid);
        let permit = match state.admit(valid.choices.len()) {
            Ok(p) => p,
            Err(e) => {
                journey.failed(&e);
                return Err(e);
            }
        };
        let mut carrier = journey.carrier();
        let count = valid.choices.len();
        let mut choices = Vec::with_capacity(valid.choices.len());
        let mut outputs = SelectAll::new();
        for (i, mut spec) in valid.choices.into_iter().enumerate() {
            let detok = IncrementalDetokenizer::new(spec.request.prompt(), true);
            let engine_id = spec.request.id().to_owned();
            // Each engine request carries the context; the last takes the original.
            let own = if i + 1 == count {
                carrier.take()
            } else {
                carrier.clone()
            };
            if let Some(c) = own {
                spec.request.set_carrier(c);
            }
            let added = state
                .engine()
                .add_request(spec.request)
                .map_err(|e| match e {
                    EngineError::NotRunning => {
                        ApiError::Unavailable("the engine is not running".into())
                    }
                    other => ApiError::Internal(other.to_string()),
                });
            let rs = match added {
                Ok(rs) => rs,
                Err(e) => {
                    // Choices already added are aborted as `outputs` drops.
                    journey.failed(&e);
                    return Err(e);
                }
            };
            let s = stream::unfold(rs, |mut rs| async move { rs.next().await.map(|o| (o, rs)) })
                .map(move |o| (i, o));
            outputs.push(Box::pin(s) as OutputStream);
            choices.push(Choice {
                index: spec.index,
                engine_id,
                detok,
                stop: StopMatcher::new(spec.stop),
                finish: None,
                engine_done: false,
                completion_tokens: 0,
                text_len: 0,
            });
        }
        journey.handed_off();
        let deadline = state.limits().request_timeout.map(|limit| {
            // Counted from the request's arrival, which parsing and validation came after.
            let spent = std::time::Duration::from_secs_f64(journey.elapsed());
            let left = limit.saturating_sub(spent);
            (tokio::time::Instant::now() + left, limit)
        });
        Ok(Self {
            state: state.clone(),
            choices,
            outputs,
            prompt_tokens: valid.prompt_tokens,
            logprobs: valid.logprobs.is_some(),
            model: valid.model,
            journey,
            deadline,
            _permit: permit,
        })
    }

    /// Where the request's log lines go.
    pub(crate) fn log(&self) -> RequestLog {
        self.journey.log()
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        self.journey.id()
    }

    /// The next piece of some choice; `None` once every choice has finished. An error ends
    /// the journey as failed; the end of the stream does not end it: call
    /// [`Generation::depart`] once the response is written.
    pub(crate) async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        let result = match self.deadline {
            Some((at, limit)) => tokio::time::timeout_at(at, self.advance())
                .await
                .unwrap_or(Some(Err(ApiError::Timeout(limit)))),
            None => self.advance().await,
        };
        match &result {
            Some(Ok(_)) => self.journey.first_output(),
            Some(Err(e)) => {
                self.record();
                self.journey.failed(e);
            }
            None => {}
        }
        result
    }

    /// The response was completely written: `api.DEPARTED`, then usage, finish reasons and
    /// latency.
    ///
    /// A choice ended by a stop string was aborted in the engine, and its engine timestamps
    /// come with that abort's `Finished`, up to a step later. When the request is traced, a
    /// task waits for them (at most [`ENGINE_TIMES_WAIT`]) and then records the span, so the
    /// response is never held up for its telemetry.
    pub(crate) fn depart(&mut self) {
        self.journey.departed();
        let waiting: Vec<usize> = (0..self.choices.len())
            .filter(|&i| !self.choices[i].engine_done)
            .collect();
        if waiting.is_empty() || !self.journey.is_traced() {
            self.record();
            return;
        }
        let (usage, reasons) = (self.usage(), self.finish_reasons());
        let model = self.model.clone();
        let mut journey = self.journey.take();
        let mut outputs = std::mem::take(&mut self.outputs);
        tokio::spawn(async move {
            let mut waiting = waiting;
            let _ = tokio::time::timeout(ENGINE_TIMES_WAIT, async {
                while !waiting.is_empty() {
                    match outputs.next().await {
                        Some((i, RequestOutput::Finished(f))) => {
                            journey.engine_finished(&f.timestamps);
                            waiting.retain(|&w| w != i);
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
            })
            .await;
            journey.record(&model, &usage, &reasons);
        });
    }

    fn record(&mut self) {
        let (usage, reasons) = (self.usage(), self.finish_reasons());
        self.journey.record(&self.model, &usage, &reasons);
    }

    fn finish_reasons(&self) -> Vec<&'static str> {
        self.choices
            .iter()
            .map(|c| c.finish.unwrap_or("abort"))
            .collect()
    }

    async fn advance(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            if self.choices.iter().all(|c| c.finish.is_some()) {
                return None;
            }
            let Some((i, output)) = self.outputs.next().await else {
                return Some(Err(ApiError::Unavailable(
                    "the engine stopped before the request finished".into(),
                )));
            };
            if let RequestOutput::Finished(f) = &output {
                self.journey.engine_finished(&f.timestamps);
                self.choices[i].engine_done = true;
            }
            if self.choices[i].finish.is_some() {
                // The rest of a choice ended by a stop string (its abort's `Finished`).
                continue;
            }
            let delta = match output {
                RequestOutput::Token(token) => self.on_token(i, &token),
                RequestOutput::Finished(f) => self.on_finished(i, f.status, f.error.as_deref()),
            };
            match delta {
                Ok(Some(d)) => return Some(Ok(d)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn on_token(&mut self, i: usize, token: &TokenOutput) -> Result<Option<Delta>, ApiError> {
        let tokenizer = self.state.tokenizer();
        let choice = &mut self.choices[i];
        choice.completion_tokens += 1;
        let piece = choice
            .detok
            .push(tokenizer, token.token_id)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let out = choice.stop.push(&piece);
        let mut tokens = Vec::new();
        if self.logprobs
            && let Some(lp) = &token.logprobs
        {
            let text = token_text(self, token.token_id);
            let top = lp
                .top
                .iter()
                .map(|&(id, p)| (token_text(self, id), p))
                .collect();
            let choice = &mut self.choices[i];
            tokens.push(TokenInfo {
                offset: choice.text_len,
                text,
                logprob: lp.logprob,
                top,
            });
        }
        let choice = &mut self.choices[i];
        choice.text_len += out.text.len();
        if out.stopped.is_some() {
            choice.finish = Some("stop");
            // The engine does not know about stop strings: end the request there.
            let _ = self.state.engine().abort(&choice.engine_id);
        } else if out.text.is_empty() && tokens.is_empty() {
            return Ok(None);
        }
        Ok(Some(Delta {
            index: choice.index,
            text: out.text,
            tokens,
            finish_reason: choice.finish,
        }))
    }

    fn on_finished(
        &mut self,
        i: usize,
        status: FinishStatus,
        error: Option<&str>,
    ) -> Result<Option<Delta>, ApiError> {
        let reason = match status {
            FinishStatus::Stopped => "stop",
            FinishStatus::Length => "length",
            FinishStatus::Ignored => {
                return Err(ApiError::ContextLength(
                    "the prompt does not fit in the model's context".into(),
                ));
            }
            FinishStatus::Aborted => {
                return Err(ApiError::Unavailable(
                    "the request was aborted (the server is shutting down)".into(),
                ));
            }
            FinishStatus::Error => {
                return Err(ApiError::Generation(format!(
                    "the engine failed: {}",
                    error.unwrap_or("unknown error")
                )));
            }
        };
        let tokenizer = self.state.tokenizer();
        let choice = &mut self.choices[i];
        let piece = choice
            .detok
            .flush(tokenizer)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let out = choice.stop.push(&piece);
        let mut text = out.text;
        let reason = if out.stopped.is_some() {
            "stop"
        } else {
            text.push_str(&choice.stop.finish());
            reason
        };
        choice.text_len += text.len();
        choice.finish = Some(reason);
        Ok(Some(Delta {
            index: choice.index,
            text,
            tokens: Vec::new(),
            finish_reason: Some(reason),
        }))
    }

    /// Token counts so far (complete once [`Generation::next`] has returned `None`).
    pub(crate) fn usage(&self) -> UsageOut {
        let completion_tokens = self.choices.iter().map(|c| c.completion_tokens).sum();
        UsageOut {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }

    /// Runs to the end and returns every choice whole, in index order.
    pub(crate) async fn collect(&mut self) -> Result<Vec<CollectedChoice>, ApiError> {
        let mut out: Vec<CollectedChoice> = self
            .choices
            .iter()
            .map(|c| CollectedChoice {
                index: c.index,
                ..CollectedChoice::default()
            })
            .collect();
        while let Some(delta) = self.next().await {
            let delta = delta?;
            let Some(c) = out.iter_mut().find(|c| c.index == delta.index) else {
                continue;
            };
            c.text.push_str(&delta.text);
            c.tokens.extend(delta.tokens);
            if delta.finish_reason.is_some() {
                c.finish_reason = delta.finish_reason;
            }
        }
        Ok(out)
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        // Gone before departing or failing (a client that went away): the journey still gets
        // the tokens produced so far.
        if !self.journey.is_ended() {
            self.record();
        }
    }
}

/// The text of one token as logprobs show it.
fn token_text(g: &Generation, id: u32) -> String {
    g.state.tokenizer().decode(&[id], false).unwrap_or_default()
}
