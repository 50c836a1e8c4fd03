//! `POST /v1/completions`.

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use crate::endpoints;
use crate::error::ApiError;
use crate::generation::{Delta, Generation, TokenInfo};
use crate::journey::Journey;
use crate::routes;
use crate::sse::{self, ChunkWriter, json_event};
use crate::state::AppState;
use crate::validation;
use crate::wire::{
    CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse, UsageOut,
};

/// The handler: the journey starts as the request arrives, before its body is read.
pub(crate) async fn handle(State(state): State<AppState>, request: Request) -> Response {
    routes::in_journey(state, request, endpoints::COMPLETIONS, respond).await
}

async fn respond(
    state: AppState,
    request: Request,
    mut journey: Journey,
    arrival: f64,
) -> Result<Response, ApiError> {
    let body = Json::<CompletionRequest>::from_request(request, &state).await;
    let Json(request) = journey.check(body.map_err(ApiError::from))?;
    let id = journey.id().to_owned();
    let valid = {
        let (state, id) = (state.clone(), id.clone());
        state
            .clone()
            .run_cpu(move || validation::completion(&state, request, &id, arrival))
            .await
    };
    let valid = journey.check(valid)?;
    let (created, model) = (valid.created, valid.model.clone());
    let (stream, include_usage, logprobs) = (valid.stream, valid.include_usage, valid.logprobs);
    let mut generation = Generation::start(&state, valid, journey)?;
    let writer = CompletionChunks {
        id: generation.id().to_owned(),
        created,
        model,
        logprobs: logprobs.is_some(),
    };
    let response = if stream {
        sse::respond(generation, writer, include_usage).into_response()
    } else {
        let choices = generation.collect().await?;
        let choices = choices
            .into_iter()
            .map(|c| CompletionChoice {
                index: c.index,
                text: c.text,
                logprobs: writer.logprobs.then(|| completion_logprobs(&c.tokens)),
                finish_reason: c.finish_reason,
            })
            .collect();
        let response = Json(writer.response(choices, Some(generation.usage()))).into_response();
        generation.depart();
        response
    };
    Ok(response)
}

fn completion_logprobs(tokens: &[TokenInfo]) -> CompletionLogprobs {
    CompletionLogprobs {
        tokens: tokens.iter().map(|t| t.text.clone()).collect(),
        token_logprobs: tokens.iter().map(|t| t.logprob).collect(),
        top_logprobs: tokens
            .iter()
            .map(|t| {
                t.logprob.map(|_| {
                    t.top
                        .iter()
                        .map(|(text, lp)| (text.clone(), Value::from(*lp)))
                        .collect::<Map<String, Value>>()
                })
            })
            .collect(),
        text_offset: tokens.iter().map(|t| t.offset).collect(),
    }
}

/// Writes `text_completion` objects, whole or as chunks.
struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    logprobs: bool,
}

impl CompletionChunks {
    fn response(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<UsageOut>,
    ) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }
}

impl ChunkWriter for CompletionChunks {
    fn opening(&self) -> Vec<Event> {
        Vec::new()
    }

    fn delta(&self, delta: &Delta) -> Event {
        let choice = CompletionChoice {
            index: delta.index,
            text: delta.text.clone(),
            logprobs: (self.logprobs && !delta.tokens.is_empty())
                .then(|| completion_logprobs(&delta.tokens)),
            finish_reason: delta.finish_reason,
        };
        json_event(&self.response(vec![choice], None))
    }

    fn usage(&self, usage: UsageOut) -> Event {
        json_event(&self.response(Vec::new(), Some(usage)))
    }
}
