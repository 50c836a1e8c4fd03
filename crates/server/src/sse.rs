//! Server-sent events as OpenAI streams them: the endpoint's opening chunks (the role, for
//! chat), one chunk per delta, the finish reason in a chunk of its own, a usage chunk when
//! `stream_options.include_usage` is set, then `data: [DONE]`. An error after the headers went
//! out is sent as `data: {"error": …}` followed by `[DONE]`.
//!
//! The body stream owns the [`Generation`]: a client that disconnects drops it, which aborts the
//! engine requests.

use std::convert::Infallible;

use axum::response::sse::{Event, Sse};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use tracing::Instrument;

use crate::error::ApiError;
use crate::generation::{Delta, Generation};
use crate::wire::UsageOut;

/// How one endpoint writes its chunks.
pub(crate) trait ChunkWriter: Send + 'static {
    /// Chunks sent before any output (chat: the role of each choice).
    fn opening(&self) -> Vec<Event>;
    /// The chunk of one delta.
    fn delta(&self, delta: &Delta) -> Event;
    /// The closing chunk with the usage.
    fn usage(&self, usage: UsageOut) -> Event;
}

/// A JSON `data:` event.
pub(crate) fn json_event(value: &impl Serialize) -> Event {
    match serde_json::to_string(value) {
        Ok(s) => Event::default().data(s),
        Err(e) => error_event(&ApiError::Internal(e.to_string())),
    }
}

fn error_event(e: &ApiError) -> Event {
    Event::default().data(serde_json::to_string(&e.body()).unwrap_or_default())
}

enum Phase {
    Opening,
    Body,
    Done,
}

/// The SSE response of `generation`, written by `writer`.
pub(crate) fn respond(
    generation: Generation,
    writer: impl ChunkWriter,
    include_usage: bool,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // Log lines written while streaming sit in the request's span (with its trace id).
    let log = generation.log().for_future(generation.id());
    let events = stream::unfold(
        (generation, writer, Phase::Opening),
        move |(mut generation, writer, phase)| {
            let log = log.clone();
            async move {
                match phase {
                    Phase::Opening => {
                        let events = writer.opening();
                        Some((events, (generation, writer, Phase::Body)))
                    }
                    Phase::Body => {
                        let events = match generation.next().await {
                            Some(Ok(delta)) => {
                                return Some((
                                    split(&writer, delta),
                                    (generation, writer, Phase::Body),
                                ));
                            }
                            Some(Err(e)) => {
                                let failure = generation.log().span(generation.id());
                                failure.in_scope(|| e.log());
                                vec![error_event(&e), done()]
                            }
                            None => {
                                let mut events = Vec::with_capacity(2);
                                if include_usage {
                                    events.push(writer.usage(generation.usage()));
                                }
                                // The contract: streaming departs before `data: [DONE]`.
                                generation.depart();
                                events.push(done());
                                events
                            }
                        };
                        Some((events, (generation, writer, Phase::Done)))
                    }
                    Phase::Done => None,
                }
            }
            .instrument(log)
        },
    )
    .flat_map(|events| stream::iter(events.into_iter().map(Ok)));
    Sse::new(events)
}

/// A delta's chunks: its text, then the finish reason in a chunk of its own.
fn split(writer: &impl ChunkWriter, delta: Delta) -> Vec<Event> {
    match delta.finish_reason {
        Some(reason) if !delta.text.is_empty() || !delta.tokens.is_empty() => {
            let finish = Delta {
                index: delta.index,
                finish_reason: Some(reason),
                ..Delta::default()
            };
            let body = Delta {
                finish_reason: None,
                ..delta
            };
            vec![writer.delta(&body), writer.delta(&finish)]
        }
        _ => vec![writer.delta(&delta)],
    }
}

fn done() -> Event {
    Event::default().data("[DONE]")
}
