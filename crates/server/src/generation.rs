//! One API request in flight: its `n` engine requests fanned out and merged back, text out of
//! tokens, stop strings, logprobs, usage, and the request's [`Journey`].
//!
//! A [`Generation`] owns the engine's [`wayfinder_core::RequestStream`]s, the in-flight permit
//! and the journey, which it tells what happens (tokens, finished choices, the engine's
//! timestamps) and which alone decides how the request ended ([`Journey::end`]). Whoever holds
//! it (the handler future, or the SSE body stream) dropping it — a client that went away —
//! aborts every engine request, frees their KV blocks, and ends the journey with
//! `client_disconnect` unless it departed or failed first.
//!
//! A choice ended by a stop string is ended in the engine as `stopped`
//! ([`wayfinder_core::EngineHandle::stop`]); the generation reads on until that `Finished`
//! comes back (at most a step later), so every choice's engine timestamps are in the journey
//! before it ends, and nothing waits after the response.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{self, SelectAll, Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use wayfinder_core::sampling::TokenLogprobs;
use wayfinder_core::{FinishStatus, RequestOutput, TokenOutput};
use wayfinder_text::IncrementalDetokenizer;
use wayfinder_text::StopMatcher;

use crate::error::ApiError;
use crate::journey::{Journey, Outcome, RequestLog};
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
    /// Its log-probability; `None` for an echoed prompt's first token, which nothing predicts.
    pub(crate) logprob: Option<f32>,
    /// The most likely alternatives (none with `logprob`).
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

/// An API request in flight; see the module docs.
pub(crate) struct Generation {
    state: AppState,
    choices: Vec<Choice>,
    outputs: SelectAll<OutputStream>,
    logprobs: bool,
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
    text_len: usize,
    /// With `echo`, until the prompt is sent: its text, ids and the logprobs come so far
    /// (shared with the blocking job that decodes it).
    echo: Option<Arc<Echo>>,
}

/// An echoed prompt waiting to be sent: once its logprobs are all in when they were asked
/// for, else with the choice's first output.
struct Echo {
    text: String,
    prompt: Vec<u32>,
    logprobs: Vec<TokenLogprobs>,
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
        let permit = journey.check(state.admit(valid.choices.len()))?;
        let mut carrier = journey.carrier();
        let count = valid.choices.len();
        let mut choices = Vec::with_capacity(valid.choices.len());
        let mut outputs = SelectAll::new();
        for (i, mut spec) in valid.choices.into_iter().enumerate() {
            let detok = IncrementalDetokenizer::new(spec.request.prompt(), true);
            let echo = spec.echo.map(|text| {
                Arc::new(Echo {
                    text,
                    prompt: spec.request.prompt().to_vec(),
                    logprobs: Vec::new(),
                })
            });
            let engine_id = spec.request.id().to_owned();
            // Each engine request carries the context; the last takes the original.
            let own = if i + 1 == count {
                carrier.take()
            } else {
                carrier.clone()
            };
            if let Some(mut c) = own {
                wayfinder_trace::carrier::set_choice_index(&mut c, spec.index);
                spec.request.set_carrier(c);
            }
            // On failure, the choices already added are aborted as `outputs` drops.
            let rs = journey.check(
                state
                    .engine()
                    .add_request(spec.request)
                    .map_err(ApiError::from),
            )?;
            let s = stream::unfold(rs, |mut rs| async move { rs.next().await.map(|o| (o, rs)) })
                .map(move |o| (i, o));
            outputs.push(Box::pin(s) as OutputStream);
            choices.push(Choice {
                index: spec.index,
                engine_id,
                detok,
                stop: spec.stop,
                finish: None,
                engine_done: false,
                text_len: 0,
                echo,
            });
        }
        journey.handed_off(&valid.model, valid.prompt_tokens, choices.len(), valid.n);
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
            logprobs: valid.logprobs.is_some(),
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

    /// The next piece of some choice; `None` once every choice has finished (and the engine
    /// has said so for each). An error ends the journey as failed; the end of the stream does
    /// not end it: call [`Generation::depart`] once the response is written.
    pub(crate) async fn next(&mut self) -> Option<Result<Delta, ApiError>> {
        let result = match self.deadline {
            Some((at, limit)) => tokio::time::timeout_at(at, self.advance())
                .await
                .unwrap_or(Some(Err(ApiError::Timeout(limit)))),
            None => self.advance().await,
        };
        match &result {
            Some(Ok(_)) => self.journey.first_output(),
            Some(Err(e)) => self.journey.end(Outcome::Failed(e)),
            None => {}
        }
        result
    }

    /// The response was completely written: the journey ends as departed.
    pub(crate) fn depart(&mut self) {
        self.journey.end(Outcome::Departed);
    }

    async fn advance(&mut self) -> Option<Result<Delta, ApiError>> {
        loop {
            let answered = self.choices.iter().all(|c| c.finish.is_some());
            if answered && self.choices.iter().all(|c| c.engine_done) {
                return None;
            }
            let Some((i, output)) = self.outputs.next().await else {
                if answered {
                    // The engine went away after the answer was complete.
                    return None;
                }
                return Some(Err(ApiError::Unavailable(
                    "the engine stopped before the request finished".into(),
                )));
            };
            if let RequestOutput::Finished(f) = &output {
                self.journey.engine_finished(i, f);
                self.choices[i].engine_done = true;
            }
            if self.choices[i].finish.is_some() {
                // The rest of a choice ended by a stop string (its abort's `Finished`).
                continue;
            }
            let delta = match output {
                RequestOutput::PromptLogprobs(entries) => self.on_prompt_logprobs(i, entries).await,
                RequestOutput::Token(token) => match self.echo(i).await {
                    Ok(echo) => self.on_token(i, &token).map(|d| join(echo, d)),
                    Err(e) => Err(e),
                },
                RequestOutput::Finished(f) => match self.echo(i).await {
                    Ok(echo) => self
                        .on_finished(i, f.status, f.error.as_deref())
                        .map(|d| join(echo, d)),
                    Err(e) => Err(e),
                },
            };
            match delta {
                Ok(Some(d)) => return Some(Ok(d)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Keeps the prompt's logprobs; once all are in, the echo is due.
    async fn on_prompt_logprobs(
        &mut self,
        i: usize,
        entries: Vec<TokenLogprobs>,
    ) -> Result<Option<Delta>, ApiError> {
        let Some(echo) = self.choices[i].echo.as_mut().and_then(Arc::get_mut) else {
            return Ok(None);
        };
        echo.logprobs.extend(entries);
        if echo.logprobs.len() + 1 >= echo.prompt.len() {
            self.echo(i).await
        } else {
            Ok(None)
        }
    }

    /// The echoed prompt, if it is still to be sent: its text, and its tokens when logprobs
    /// were asked for (the first without a logprob, as nothing predicts it). Decoding every
    /// prompt token (and its alternatives) is CPU work in proportion to the prompt, so it runs
    /// on the blocking pool like the prompt's tokenizing did.
    async fn echo(&mut self, i: usize) -> Result<Option<Delta>, ApiError> {
        let Some(echo) = self.choices[i].echo.take() else {
            return Ok(None);
        };
        let tokens = if self.logprobs {
            let state = self.state.clone();
            let echo = Arc::clone(&echo);
            self.state
                .run_cpu(move || Ok(echo_tokens(&state, &echo)))
                .await?
        } else {
            Vec::new()
        };
        let choice = &mut self.choices[i];
        choice.text_len = echo.text.len();
        Ok(Some(Delta {
            index: choice.index,
            text: echo.text.clone(),
            tokens,
            finish_reason: None,
        }))
    }

    fn on_token(&mut self, i: usize, token: &TokenOutput) -> Result<Option<Delta>, ApiError> {
        self.journey.token(i);
        let tokenizer = self.state.tokenizer();
        let choice = &mut self.choices[i];
        let piece = choice.detok.push(tokenizer, token.token_id)?;
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
                logprob: Some(lp.logprob),
                top,
            });
        }
        let choice = &mut self.choices[i];
        choice.text_len += out.text.len();
        if out.stopped.is_some() {
            choice.finish = Some("stop");
            self.journey.choice_finished(i, "stop");
            // The engine does not see text: end the request there, as stopped. Its `Finished`
            // (with the engine's timestamps) is read before the journey ends.
            let _ = self.state.engine().stop(&choice.engine_id);
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
        let reason = ApiError::finish_reason(status, error)?;
        let tokenizer = self.state.tokenizer();
        let choice = &mut self.choices[i];
        let piece = choice.detok.flush(tokenizer)?;
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
        self.journey.choice_finished(i, reason);
        Ok(Some(Delta {
            index: choice.index,
            text,
            tokens: Vec::new(),
            finish_reason: Some(reason),
        }))
    }

    /// Token counts so far (complete once [`Generation::next`] has returned `None`).
    pub(crate) fn usage(&self) -> UsageOut {
        self.journey.usage()
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

/// `first` (an echo) then `then` as one delta.
fn join(first: Option<Delta>, then: Option<Delta>) -> Option<Delta> {
    match (first, then) {
        (Some(mut a), Some(b)) => {
            a.text.push_str(&b.text);
            a.tokens.extend(b.tokens);
            a.finish_reason = b.finish_reason;
            Some(a)
        }
        (a, b) => a.or(b),
    }
}

/// An echoed prompt's tokens with their logprobs and text offsets.
fn echo_tokens(state: &AppState, echo: &Echo) -> Vec<TokenInfo> {
    let tokenizer = state.tokenizer();
    let text = |id: u32| tokenizer.decode(&[id], false).unwrap_or_default();
    let mut detok = IncrementalDetokenizer::new(&[], false);
    let mut offset = 0;
    let mut tokens = Vec::with_capacity(echo.prompt.len());
    for (k, &id) in echo.prompt.iter().enumerate() {
        let lp = k.checked_sub(1).and_then(|k| echo.logprobs.get(k));
        tokens.push(TokenInfo {
            text: text(id),
            logprob: lp.map(|lp| lp.logprob),
            top: lp.map_or_else(Vec::new, |lp| {
                lp.top.iter().map(|&(t, p)| (text(t), p)).collect()
            }),
            offset,
        });
        offset += detok.push(tokenizer, id).map_or(0, |piece| piece.len());
    }
    tokens
}

/// The text of one token as logprobs show it.
fn token_text(g: &Generation, id: u32) -> String {
    g.state.tokenizer().decode(&[id], false).unwrap_or_default()
}
