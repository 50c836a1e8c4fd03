//! The messages between an API server and an engine-core process, and their framing: each
//! message is one JSON document in a frame with a 4-byte big-endian length. The connection
//! opens with `Hello` (the client's protocol version) answered by `Welcome` (the engine's
//! version, pid and limits) or `Refused`; after that the client sends requests, aborts, stats
//! and pings, and the engine streams every request's outputs back, tagged with the client's
//! sequence number.

use std::collections::HashMap;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use wayfinder_core::{EngineStats, RequestOutput, SamplingParams, StopConditions};

/// The protocol's version; a peer with another one is refused.
pub const PROTOCOL_VERSION: u32 = 4;

/// The largest frame (a prompt of a few million tokens).
pub const MAX_FRAME_BYTES: usize = 64 << 20;

/// The largest frame before a connection has shown its token: a `Hello` is tiny, and a peer
/// that has not authenticated must not make the engine buffer 64 MiB.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 64 << 10;

/// A generation request as it crosses the boundary: what the engine needs to rebuild the
/// validated [`wayfinder_core::EngineRequest`], including the trace-context carrier, exactly
/// as in-process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireRequest {
    /// The client's request id.
    pub id: String,
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop conditions.
    pub stop: StopConditions,
    /// Priority.
    pub priority: i32,
    /// The W3C trace-context carrier (and the sampling decision).
    pub carrier: HashMap<String, String>,
    /// Send the request's journey marks back with its `Finished` (for the API's history).
    #[serde(default)]
    pub journey: bool,
    /// Its prefix-cache salt.
    #[serde(default)]
    pub cache_salt: Option<String>,
}

/// What the engine tells a client about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineInfo {
    /// The engine process's id.
    pub pid: u32,
    /// The longest request it takes, prompt plus output.
    pub max_model_len: usize,
    /// KV blocks in its pool.
    pub num_blocks: usize,
    /// Tokens per block.
    pub block_size: usize,
}

/// Client → engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToEngine {
    /// Opens the connection.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        version: u32,
        /// The engine token (`--engine-token`); compared in constant time.
        token: String,
    },
    /// Runs a request; its outputs come back as `Output { seq, .. }`.
    Add {
        /// The client's number for it, unique on this connection.
        seq: u64,
        /// The request (boxed: it is by far the largest message).
        request: Box<WireRequest>,
    },
    /// Aborts request `seq` (its stream was dropped).
    Abort {
        /// Which.
        seq: u64,
    },
    /// Aborts the live request with this client id.
    AbortById {
        /// Which.
        id: String,
    },
    /// Ends the live request with this client id as `stopped` (a stop string).
    StopById {
        /// Which.
        id: String,
    },
    /// Asks for the engine's load.
    Stats {
        /// Echoed in the answer.
        tag: u64,
    },
    /// Asks whether the engine is alive.
    Ping {
        /// Echoed in the answer.
        tag: u64,
    },
}

/// Engine → client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromEngine {
    /// The handshake succeeded.
    Welcome {
        /// The engine's [`PROTOCOL_VERSION`].
        version: u32,
        /// About the engine.
        info: EngineInfo,
    },
    /// The handshake failed; the engine closes the connection.
    Refused {
        /// Why.
        reason: String,
    },
    /// One output of request `seq`; `Finished` is its last.
    Output {
        /// The client's number for the request.
        seq: u64,
        /// The output.
        output: RequestOutput,
    },
    /// The engine's load.
    Stats {
        /// The request's tag.
        tag: u64,
        /// The load.
        stats: EngineStats,
    },
    /// The engine is alive.
    Pong {
        /// The ping's tag.
        tag: u64,
    },
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed mid-frame.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame is not a message of this protocol.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME_BYTES)
        .new_codec()
}

/// Reads messages of type `T`.
#[derive(Debug)]
pub struct Reader<R>(FramedRead<R, LengthDelimitedCodec>);

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads from `io`.
    pub fn new(io: R) -> Self {
        Self(FramedRead::new(io, codec()))
    }

    /// Sets the largest frame accepted from now on (longer ones are an error).
    pub fn set_max_frame(&mut self, bytes: usize) {
        self.0.decoder_mut().set_max_frame_length(bytes);
    }

    /// The next message; `None` when the peer closed the connection cleanly.
    pub async fn next<T: for<'de> Deserialize<'de>>(&mut self) -> Option<Result<T, FrameError>> {
        let frame = self.0.next().await?;
        Some(
            frame
                .map_err(FrameError::from)
                .and_then(|bytes| Ok(serde_json::from_slice(&bytes)?)),
        )
    }
}

/// Writes messages.
#[derive(Debug)]
pub struct Writer<W>(FramedWrite<W, LengthDelimitedCodec>);

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Writes to `io`.
    pub fn new(io: W) -> Self {
        Self(FramedWrite::new(io, codec()))
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &impl Serialize) -> Result<(), FrameError> {
        let bytes = serde_json::to_vec(message)?;
        self.0.send(tokio_util::bytes::Bytes::from(bytes)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_through_frames() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut writer = Writer::new(a);
        let mut reader = Reader::new(b);
        let add = ToEngine::Add {
            seq: 7,
            request: Box::new(WireRequest {
                id: "cmpl-1-0".into(),
                prompt: vec![1, 2, 3],
                sampling: SamplingParams::default(),
                stop: StopConditions {
                    max_tokens: 5,
                    ..StopConditions::default()
                },
                priority: 0,
                carrier: HashMap::from([("traceparent".into(), "00-ab-cd-01".into())]),
                journey: false,
                cache_salt: None,
            }),
        };
        writer.send(&add).await.expect("sent");
        writer.send(&ToEngine::Ping { tag: 3 }).await.expect("sent");
        drop(writer);
        let first: ToEngine = reader.next().await.expect("a frame").expect("a message");
        assert_eq!(first, add);
        let second: ToEngine = reader.next().await.expect("a frame").expect("a message");
        assert_eq!(second, ToEngine::Ping { tag: 3 });
        assert!(reader.next::<ToEngine>().await.is_none(), "clean end");
    }

    #[tokio::test]
    async fn a_frame_that_is_not_a_message_is_an_error_not_a_panic() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut raw = FramedWrite::new(a, codec());
        raw.send(tokio_util::bytes::Bytes::from_static(b"{not json"))
            .await
            .expect("sent");
        let mut reader = Reader::new(b);
        let got = reader.next::<ToEngine>().await.expect("a frame");
        assert!(matches!(got, Err(FrameError::Malformed(_))));
    }
}
