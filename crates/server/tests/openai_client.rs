//! The server driven by a real OpenAI client library (`async-openai`) over a socket.

mod common;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use common::{MODEL, Options, Running};
use futures_util::StreamExt;

fn client(r: &Running, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(r.url("/v1"))
            .with_api_key(key),
    )
}

fn chat_request(stream: bool) -> CreateChatCompletionRequest {
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(MODEL)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hello from a real client")
            .build()
            .expect("message")
            .into()])
        .max_completion_tokens(8u32)
        .temperature(0.0)
        .n(2u8);
    if stream {
        args.stream_options(ChatCompletionStreamOptions {
            include_usage: Some(true),
            ..ChatCompletionStreamOptions::default()
        });
    }
    args.build().expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streaming_with_async_openai() {
    let r = Running::start(&Options {
        api_key: Some("client-key".into()),
        ..Options::default()
    })
    .await;
    let client = client(&r, "client-key");

    let mut stream = client
        .chat()
        .create_stream(chat_request(true))
        .await
        .expect("stream opens");
    let mut texts = [String::new(), String::new()];
    let mut finishes = 0;
    let mut usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a well-formed chunk");
        assert_eq!(chunk.object, "chat.completion.chunk");
        for choice in &chunk.choices {
            if let Some(content) = &choice.delta.content {
                texts[choice.index as usize].push_str(content);
            }
            finishes += usize::from(choice.finish_reason.is_some());
        }
        if chunk.usage.is_some() {
            usage = chunk.usage;
        }
    }
    assert_eq!(finishes, 2);
    let usage = usage.expect("the usage chunk");
    assert_eq!(usage.completion_tokens, 16);

    let whole = client
        .chat()
        .create(chat_request(false))
        .await
        .expect("a whole response");
    assert_eq!(whole.choices.len(), 2);
    for choice in &whole.choices {
        assert_eq!(
            choice.message.content.as_deref(),
            Some(texts[choice.index as usize].as_str()),
            "streamed and whole texts agree (greedy)"
        );
    }
    assert_eq!(whole.usage.map(|u| u.completion_tokens), Some(16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_and_errors_with_async_openai() {
    let r = Running::start(&Options {
        api_key: Some("client-key".into()),
        ..Options::default()
    })
    .await;
    let client = client(&r, "client-key");
    let request = CreateCompletionRequestArgs::default()
        .model(MODEL)
        .prompt("The river")
        .max_tokens(6u32)
        .temperature(0.0)
        .build()
        .expect("request");
    let whole = client
        .completions()
        .create(request.clone())
        .await
        .expect("a completion");
    let mut streamed = String::new();
    let mut stream = client
        .completions()
        .create_stream(request)
        .await
        .expect("stream opens");
    while let Some(chunk) = stream.next().await {
        for choice in chunk.expect("a well-formed chunk").choices {
            streamed.push_str(&choice.text);
        }
    }
    assert_eq!(whole.choices[0].text, streamed);

    // Errors come back as OpenAI API errors the client understands.
    let wrong_model = CreateCompletionRequestArgs::default()
        .model("no-such-model")
        .prompt("x")
        .build()
        .expect("request");
    match client.completions().create(wrong_model).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    let unauthorised = self::client(&r, "wrong-key");
    match unauthorised.chat().create(chat_request(false)).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code, 401);
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}
