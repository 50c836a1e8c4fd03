//! `POST /v1/chat/completions`.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};

use crate::endpoints;
use crate::error::ApiError;
use crate::generation::{Delta, Generation, TokenInfo};
use crate::journey::Journey;
use crate::routes;
use crate::sse::{self, ChunkWriter, json_event};
use crate::state::AppState;
use crate::validation;
use crate::wire::{
    ChatChoice, ChatChunkChoice, ChatCompletionChunk, ChatCompletionRequest,
    ChatCompletionResponse, ChatLogprobs, ChatMessageOut, ChatTokenLogprob, ChatTopLogprob,
    UsageOut,
};

/// The handler: the journey starts as the request arrives, before its body is read.
pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    routes::in_journey(state, request, endpoints::CHAT, respond).await
}

async fn respond(
    state: AppState,
    request: Request,
    mut journey: Journey,
    arrival: f64,
) -> Result<Response, ApiError> {
    let body = Json::<ChatCompletionRequest>::from_request(request, &state).await;
    let Json(request) = journey.check(body.map_err(ApiError::from))?;
    let id = journey.id().to_owned();
    let valid = {
        let (state, id) = (state.clone(), id.clone());
        state
            .clone()
            .run_cpu(move || validation::chat(&state, &request, &id, arrival))
            .await
    };
    let valid = journey.check(valid)?;
    let (created, model) = (valid.created, valid.model.clone());
    let (stream, include_usage, logprobs) = (valid.stream, valid.include_usage, valid.logprobs);
    let indices: Vec<u32> = valid.choices.iter().map(|c| c.index).collect();
    let mut generation = Generation::start(&state, valid, journey)?;
    let response = if stream {
        let writer = ChatChunks {
            id: generation.id().to_owned(),
            created,
            model,
            indices,
            logprobs: logprobs.is_some(),
        };
        sse::respond(generation, writer, include_usage).into_response()
    } else {
        let choices = generation.collect().await?;
        let response = Json(ChatCompletionResponse {
            id: generation.id().to_owned(),
            object: "chat.completion",
            created,
            model,
            choices: choices
                .into_iter()
                .map(|c| ChatChoice {
                    index: c.index,
                    message: ChatMessageOut {
                        role: Some("assistant"),
                        content: Some(c.text),
                    },
                    logprobs: logprobs.map(|_| chat_logprobs(&c.tokens)),
                    finish_reason: c.finish_reason,
                })
                .collect(),
            usage: generation.usage(),
        })
        .into_response();
        generation.depart();
        response
    };
    Ok(response)
}

fn chat_logprobs(tokens: &[TokenInfo]) -> ChatLogprobs {
    ChatLogprobs {
        content: tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.text.clone(),
                logprob: t.logprob.unwrap_or_default(),
                bytes: t.text.as_bytes().to_vec(),
                top_logprobs: Some(
                    t.top
                        .iter()
                        .map(|(text, lp)| ChatTopLogprob {
                            token: text.clone(),
                            logprob: *lp,
                            bytes: text.as_bytes().to_vec(),
                        })
                        .collect(),
                ),
            })
            .collect(),
    }
}

/// Writes `chat.completion.chunk`s.
struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    indices: Vec<u32>,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Vec<ChatChunkChoice>, usage: Option<UsageOut>) -> Event {
        json_event(&ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        })
    }
}

impl ChunkWriter for ChatChunks {
    fn opening(&self) -> Vec<Event> {
        self.indices
            .iter()
            .map(|&index| {
                let role = ChatChunkChoice {
                    index,
                    delta: ChatMessageOut {
                        role: Some("assistant"),
                        content: Some(String::new()),
                    },
                    logprobs: None,
                    finish_reason: None,
                };
                self.chunk(vec![role], None)
            })
            .collect()
    }

    fn delta(&self, delta: &Delta) -> Event {
        let content = (delta.finish_reason.is_none()).then(|| delta.text.clone());
        self.chunk(
            vec![ChatChunkChoice {
                index: delta.index,
                delta: ChatMessageOut {
                    role: None,
                    content,
                },
                logprobs: (self.logprobs && !delta.tokens.is_empty())
                    .then(|| chat_logprobs(&delta.tokens)),
                finish_reason: delta.finish_reason,
            }],
            None,
        )
    }

    fn usage(&self, usage: UsageOut) -> Event {
        self.chunk(Vec::new(), Some(usage))
    }
}
