//! One streaming request and what it measured, as `vllm bench serve` measures it.
//!
//! [`Client::send`] posts the body, reads the server-sent events as they arrive and hands each
//! `data:` payload, with its arrival time, to a [`StreamReader`]: a plain state machine (tested
//! without sockets) that finds the content chunks, the usage and `[DONE]`.
//!
//! - TTFT: request start → first chunk with content (text, or a chat delta's `content` or
//!   `reasoning_content`); ITL: the gaps between consecutive content chunks; end-to-end
//!   latency: request start → last content chunk.
//! - Output tokens: `usage.completion_tokens` of the stream (`stream_options.include_usage`);
//!   else `max_tokens` when the finish reason is `length`; else the number of content chunks.
//!   Input tokens: `usage.prompt_tokens`, else the prompt's word count; cached input tokens:
//!   `usage.prompt_tokens_details.cached_tokens`, where the server reports it.
//! - Every way a request can go wrong is a [`Failure`] with a [`FailureKind`], never a panic: a
//!   refused connection, a timeout, a non-2xx status, a chunk that is not a JSON object with
//!   `choices` or `usage`, an `error` object in the stream, a stream that ends without
//!   `[DONE]`, and a stream without any content.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Context;
use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::StreamExt;
use serde_json::Value;

use super::Endpoint;
use super::workload::PlannedRequest;

/// The HTTP client of a run: one connection pool, one endpoint.
#[derive(Debug, Clone)]
pub(super) struct Client {
    http: reqwest::Client,
    base_url: String,
    endpoint: Endpoint,
    api_key: Option<String>,
}

/// A request's outcome.
#[derive(Debug, Clone)]
pub(super) struct RequestResult {
    pub(super) outcome: Result<Success, Failure>,
    /// Seconds from the start of the run to the moment it was sent.
    pub(super) sent_at: f64,
    /// The trace id of the `traceparent` it carried.
    pub(super) trace_id: Option<String>,
}

/// What a completed request measured; times in seconds from its start.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Success {
    pub(super) ttft: f64,
    /// Gaps between consecutive content chunks.
    pub(super) itl: Vec<f64>,
    pub(super) latency: f64,
    pub(super) prompt_tokens: u64,
    pub(super) output_tokens: u64,
    /// `usage.prompt_tokens_details.cached_tokens`, when the server reports it.
    pub(super) cached_tokens: Option<u64>,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Failure {
    pub(super) kind: FailureKind,
    /// The server's error message or the client's, for the result JSON.
    pub(super) detail: String,
}

/// The kinds of failure the summary counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum FailureKind {
    /// Could not connect, or the connection broke.
    Connection,
    /// `--request-timeout` passed.
    Timeout,
    /// A status other than 2xx.
    Status(u16),
    /// A chunk that is not JSON, or not a chunk.
    MalformedChunk,
    /// An `error` object in the stream.
    StreamError,
    /// The stream ended without `data: [DONE]`.
    NoDone,
    /// `[DONE]` came without any content before it.
    NoOutput,
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connection => f.write_str("connection error"),
            Self::Timeout => f.write_str("timeout"),
            Self::Status(code) => write!(f, "HTTP {code}"),
            Self::MalformedChunk => f.write_str("malformed chunk"),
            Self::StreamError => f.write_str("error in stream"),
            Self::NoDone => f.write_str("stream ended without [DONE]"),
            Self::NoOutput => f.write_str("no output"),
        }
    }
}

impl Failure {
    fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }

    fn transport(e: &reqwest::Error) -> Self {
        let kind = if e.is_timeout() {
            FailureKind::Timeout
        } else {
            FailureKind::Connection
        };
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        Self::new(kind, detail)
    }
}

impl Client {
    /// A client for `base_url` (the server's root, without `/v1`).
    pub(super) fn new(
        base_url: &str,
        endpoint: Endpoint,
        api_key: Option<String>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        // A fresh connection per request: llama.cpp's server closes a connection after a
        // streamed response without saying so, and a pooled connection reused in that instant
        // fails ("connection closed before message completed"). Every server gets the same.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base_url: base_url.to_owned(),
            endpoint,
            api_key,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let builder = self.http.post(self.url(path));
        match &self.api_key {
            Some(key) => builder.bearer_auth(key),
            None => builder,
        }
    }

    /// The first model `GET /v1/models` lists.
    pub(super) async fn first_model(&self) -> anyhow::Result<String> {
        let url = self.url("/v1/models");
        let mut get = self.http.get(&url);
        if let Some(key) = &self.api_key {
            get = get.bearer_auth(key);
        }
        let response = get.send().await.with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status}: {text}");
        let list: Value =
            serde_json::from_str(&text).with_context(|| format!("GET {url}: not JSON"))?;
        list["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("GET {url} lists no model; give --model"))
    }

    /// Sends `request`, reads its stream to the end, and says what it measured.
    pub(super) async fn send(&self, request: &PlannedRequest, run_start: Instant) -> RequestResult {
        let start = Instant::now();
        RequestResult {
            outcome: self.stream(request, start).await,
            sent_at: start.duration_since(run_start).as_secs_f64(),
            trace_id: request.traceparent.as_ref().map(|t| t.trace_id.clone()),
        }
    }

    async fn stream(&self, request: &PlannedRequest, start: Instant) -> Result<Success, Failure> {
        let mut post = self.post(self.endpoint.path()).json(&request.body);
        if let Some(t) = &request.traceparent {
            post = post.header("traceparent", t.header());
        }
        let response = post.send().await.map_err(|e| Failure::transport(&e))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(Failure::new(
                FailureKind::Status(status.as_u16()),
                error_message(&text),
            ));
        }
        let mut reader = StreamReader::new(self.endpoint, request);
        let mut events = response.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let t = start.elapsed().as_secs_f64();
            let event = event.map_err(|e| match e {
                EventStreamError::Transport(e) => Failure::transport(&e),
                EventStreamError::Utf8(e) => {
                    Failure::new(FailureKind::MalformedChunk, e.to_string())
                }
                EventStreamError::Parser(e) => {
                    Failure::new(FailureKind::MalformedChunk, e.to_string())
                }
            })?;
            if reader.on_data(&event.data, t)? == Step::Done {
                // Read the rest of the body so the connection can be reused.
                while events.next().await.is_some() {}
                break;
            }
        }
        reader.finish()
    }
}

/// The message of an OpenAI error body, else the start of the body.
fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| excerpt(text))
}

/// At most 200 characters of `text`, for messages.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

/// Whether the stream goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    More,
    Done,
}

/// The state of one stream: the content chunks seen so far, the usage, `[DONE]`.
#[derive(Debug)]
pub(super) struct StreamReader {
    endpoint: Endpoint,
    nominal_input: u64,
    max_tokens: u64,
    first: Option<f64>,
    last: f64,
    itl: Vec<f64>,
    content_chunks: u64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    cached_tokens: Option<u64>,
    finish_reason: Option<String>,
    done: bool,
}

impl StreamReader {
    pub(super) fn new(endpoint: Endpoint, request: &PlannedRequest) -> Self {
        Self {
            endpoint,
            nominal_input: request.nominal_input,
            max_tokens: request.max_tokens,
            first: None,
            last: 0.0,
            itl: Vec::new(),
            content_chunks: 0,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            finish_reason: None,
            done: false,
        }
    }

    /// One event's `data`, arrived `t` seconds after the request started.
    pub(super) fn on_data(&mut self, data: &str, t: f64) -> Result<Step, Failure> {
        let data = data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Step::Done);
        }
        if data.is_empty() {
            return Ok(Step::More);
        }
        let malformed = |why: &str| {
            Failure::new(
                FailureKind::MalformedChunk,
                format!("{why}: {}", excerpt(data)),
            )
        };
        let chunk: Value = serde_json::from_str(data).map_err(|e| malformed(&e.to_string()))?;
        let Value::Object(chunk) = chunk else {
            return Err(malformed("not a JSON object"));
        };
        if let Some(error) = chunk.get("error") {
            let message = error["message"]
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return Err(Failure::new(FailureKind::StreamError, message));
        }
        let usage = chunk.get("usage").filter(|u| !u.is_null());
        if let Some(usage) = usage {
            let count = |field: &str| usage.get(field).and_then(Value::as_u64);
            if !usage.is_object() {
                return Err(malformed("usage is not an object"));
            }
            self.prompt_tokens = count("prompt_tokens").or(self.prompt_tokens);
            self.completion_tokens = count("completion_tokens").or(self.completion_tokens);
            let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64();
            self.cached_tokens = cached.or(self.cached_tokens);
        }
        let choices = match chunk.get("choices") {
            Some(Value::Array(choices)) => choices.as_slice(),
            None | Some(Value::Null) if usage.is_some() => &[],
            _ => return Err(malformed("no choices")),
        };
        let mut content = false;
        for choice in choices {
            let text = match self.endpoint {
                Endpoint::Completions => &choice["text"],
                Endpoint::Chat => match &choice["delta"]["content"] {
                    Value::String(s) if !s.is_empty() => &choice["delta"]["content"],
                    _ => &choice["delta"]["reasoning_content"],
                },
            };
            content |= text.as_str().is_some_and(|s| !s.is_empty());
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_owned());
            }
        }
        if content {
            match self.first {
                None => self.first = Some(t),
                Some(_) => self.itl.push(t - self.last),
            }
            self.last = t;
            self.content_chunks += 1;
        }
        Ok(Step::More)
    }

    /// The measurement, once the stream has ended.
    pub(super) fn finish(self) -> Result<Success, Failure> {
        if !self.done {
            return Err(Failure::new(
                FailureKind::NoDone,
                format!("after {} content chunks", self.content_chunks),
            ));
        }
        let Some(ttft) = self.first else {
            return Err(Failure::new(
                FailureKind::NoOutput,
                "the stream carried no content",
            ));
        };
        let by_length = self.finish_reason.as_deref() == Some("length");
        Ok(Success {
            ttft,
            itl: self.itl,
            latency: self.last,
            prompt_tokens: self.prompt_tokens.unwrap_or(self.nominal_input),
            output_tokens: self
                .completion_tokens
                .or(by_length.then_some(self.max_tokens))
                .unwrap_or(self.content_chunks),
            cached_tokens: self.cached_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request() -> PlannedRequest {
        PlannedRequest {
            body: json!({}),
            nominal_input: 12,
            max_tokens: 4,
            arrival: 0.0,
            traceparent: None,
        }
    }

    /// Feeds `(data, t)` events; returns the outcome.
    fn read(endpoint: Endpoint, events: &[(&str, f64)]) -> Result<Success, Failure> {
        let mut reader = StreamReader::new(endpoint, &request());
        for (data, t) in events {
            if reader.on_data(data, *t)? == Step::Done {
                break;
            }
        }
        reader.finish()
    }

    fn kind(outcome: Result<Success, Failure>) -> FailureKind {
        outcome.expect_err("a failure").kind
    }

    #[test]
    fn a_chat_stream_gives_ttft_itl_latency_and_the_usage() {
        let s = read(
            Endpoint::Chat,
            &[
                (
                    r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
                    0.05,
                ),
                (r#"{"choices":[{"index":0,"delta":{"content":"a"}}]}"#, 0.25),
                (r#"{"choices":[{"index":0,"delta":{"content":"b"}}]}"#, 0.5),
                (
                    r#"{"choices":[{"index":0,"delta":{"reasoning_content":"c"}}]}"#,
                    1.0,
                ),
                (
                    r#"{"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}"#,
                    1.1,
                ),
                (
                    r#"{"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":9}}"#,
                    1.2,
                ),
                ("[DONE]", 1.3),
            ],
        )
        .expect("a success");
        assert_eq!(s.ttft, 0.25);
        assert_eq!(s.itl, [0.25, 0.5]);
        assert_eq!(s.latency, 1.0);
        assert_eq!((s.prompt_tokens, s.output_tokens), (30, 9));
    }

    #[test]
    fn without_usage_a_length_finish_counts_max_tokens_else_the_chunks() {
        let chunks = [
            (r#"{"choices":[{"text":"x"}]}"#, 0.1),
            (
                r#"{"choices":[{"text":"y","finish_reason":"length"}]}"#,
                0.2,
            ),
            ("[DONE]", 0.3),
        ];
        let s = read(Endpoint::Completions, &chunks).expect("a success");
        assert_eq!((s.prompt_tokens, s.output_tokens), (12, 4));
        assert!((s.itl[0] - 0.1).abs() < 1e-12);

        let stopped = [
            (r#"{"choices":[{"text":"x"}]}"#, 0.1),
            // OpenAI sends `"usage": null` in every chunk but the last.
            (
                r#"{"choices":[{"text":"y","finish_reason":"stop"}],"usage":null}"#,
                0.2,
            ),
            ("[DONE]", 0.3),
        ];
        let s = read(Endpoint::Completions, &stopped).expect("a success");
        assert_eq!(s.output_tokens, 2);
    }

    #[test]
    fn bad_chunks_are_malformed() {
        for bad in [
            "{not json",
            "[1, 2]",
            r#"{"id":"x"}"#,
            r#"{"choices":"abc"}"#,
            r#"{"usage":5}"#,
        ] {
            let outcome = read(Endpoint::Completions, &[(bad, 0.1), ("[DONE]", 0.2)]);
            assert_eq!(kind(outcome), FailureKind::MalformedChunk, "{bad}");
        }
    }

    #[test]
    fn an_error_in_the_stream_is_a_stream_error_with_its_message() {
        let outcome = read(
            Endpoint::Completions,
            &[
                (r#"{"choices":[{"text":"x"}]}"#, 0.1),
                (
                    r#"{"error":{"message":"engine died","type":"server_error"}}"#,
                    0.2,
                ),
                ("[DONE]", 0.3),
            ],
        );
        let failure = outcome.expect_err("a failure");
        assert_eq!(failure.kind, FailureKind::StreamError);
        assert_eq!(failure.detail, "engine died");
    }

    #[test]
    fn a_stream_must_end_with_done_and_carry_content() {
        let truncated = read(
            Endpoint::Completions,
            &[(r#"{"choices":[{"text":"x"}]}"#, 0.1)],
        );
        assert_eq!(kind(truncated), FailureKind::NoDone);
        let empty = read(
            Endpoint::Chat,
            &[
                (r#"{"choices":[{"delta":{"content":""}}]}"#, 0.1),
                ("[DONE]", 0.2),
            ],
        );
        assert_eq!(kind(empty), FailureKind::NoOutput);
    }

    #[test]
    fn error_bodies_give_their_message_or_their_start() {
        assert_eq!(
            error_message(r#"{"error":{"message":"no such model"}}"#),
            "no such model"
        );
        assert_eq!(error_message("plain"), "plain");
        let long = "é".repeat(300);
        assert_eq!(error_message(&long).chars().count(), 201);
    }
}
