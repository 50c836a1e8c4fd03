//! # wayfinder-core
//!
//! The engine core of wayfinder: what happens to a request between the API layer handing it
//! over and its last token. No HTTP, no model code, no OpenTelemetry SDK.
//!
//! # Layout
//! - [`request`]: validated [`EngineRequest`]s — prompt, sampling, stop conditions, priority,
//!   arrival time and the opaque trace-context carrier.
//! - [`sequence`]: a request inside the engine, its state machine and finish statuses.
//! - [`block_manager`]: the paged KV cache's block bookkeeping and its prefix cache, keyed by
//!   [`block_hash`]'s chained content hashes.
//! - [`scheduler`]: continuous batching with one token budget per step, chunked prefill,
//!   preemption by recompute, FCFS and priority policies. Pure and synchronous.
//! - [`executor`]: the [`Executor`] trait and the flattened [`Batch`] it runs.
//! - [`sampling`]: next-token choice, shared by every executor.
//! - [`engine`]: the loop on its own OS thread and the [`EngineCommand`]s it serves (the
//!   command enum lives with the loop that answers it); `handle.rs`: [`EngineHandle`] and
//!   [`RequestStream`], the way in and out, which only send commands.
//! - [`journey`]: the observer hooks that the tracing crate turns into `llm_core` spans.
//! - [`clock`]: the monotonic clock every timestamp uses.
//! - `testing` (feature `testing`): a deterministic executor and a recording observer.
//!
//! # Data path
//! ```text
//! EngineHandle::add_request ──▶ engine thread: Scheduler::add ─▶ loop {
//!     schedule ─▶ Batch::fill ─▶ Executor::execute ─▶ commit ─▶ sample ─▶ append_token
//!     ─▶ RequestOutput on the request's stream ─▶ free what finished }
//! ```

pub mod block_hash;
pub mod block_manager;
pub mod clock;
pub mod engine;
pub mod executor;
mod handle;
pub mod journey;
pub mod output;
pub mod request;
pub mod sampling;
pub mod scheduler;
pub mod sequence;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{EngineCommand, EngineConfig, EngineError, EngineStats};
pub use executor::{Batch, BatchSeq, Executor, ExecutorError, Logits};
pub use handle::{EngineHandle, RequestStream};
pub use journey::{
    JourneyEvent, JourneyEventKind, JourneyFields, JourneyMark, JourneyObserver, StepDetail,
    StepReport, StepRequest,
};
pub use output::{FinishedOutput, RequestOutput, TokenOutput, Usage};
pub use request::{
    Carrier, EngineRequest, InvalidRequest, RequestBuilder, SamplingParams, StopConditions,
};
pub use scheduler::{PreemptReason, ScheduleKind, SchedulerConfig, SchedulingPolicy};
pub use sequence::{FinishStatus, Phase, RequestTimestamps, SeqId};
