//! # wayfinder-testkit
//!
//! Support for wayfinder's tests and benchmarks, kept out of the library crates so that no
//! server build carries it: a dev-dependency only, never published.
//!
//! # Layout
//! - [`OtlpReceiver`] / [`ReceivedSpan`] (`receiver.rs`): a small OTLP trace receiver on
//!   loopback — gRPC and HTTP/protobuf — that keeps every span it receives, counts them, or
//!   refuses them (a collector that is full). The journey tests check what really goes over
//!   the wire with it; the tracing benchmark exports to it.
//! - `receiver_count.rs`: the counting receiver's side — spans counted by walking the request's
//!   bytes, without decoding the spans (the benchmark's receiver shares the server's cores).
//! - [`smollm2_gguf`] (`models.rs`): the real model's GGUF file, fetched by
//!   `scripts/fetch-smollm2.sh`, for the tests that compare with llama.cpp.
//! - `tests/house.rs`: the workspace's layout rules checked on its sources — no file imports
//!   another that imports it back; the model crate has no text code and draws nothing.
//!
//! # Use
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let receiver = wayfinder_testkit::OtlpReceiver::start().await?;
//! // … export to receiver.grpc_endpoint() or receiver.http_endpoint() …
//! let spans = receiver.wait_for(2, std::time::Duration::from_secs(10)).await;
//! # Ok(())
//! # }
//! ```

mod models;
mod receiver;
mod receiver_count;

pub use models::smollm2_gguf;
pub use receiver::{OtlpReceiver, ReceivedSpan};
