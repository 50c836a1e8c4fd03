//! Journey hooks: what the engine tells an observer at each step of a request's path.
//!
//! The engine calls [`JourneyObserver::on_event`] at QUEUED, SCHEDULED (FIRST or RESUME),
//! FIRST_TOKEN, PREEMPTED (with its reason) and FINISHED (with its status), with the fields the
//! journey contract (`shared/JOURNEY_CONTRACT.md`) lists for `journey.*` events and the request's
//! carrier. A run without preemption reads QUEUED → SCHEDULED(FIRST) → FIRST_TOKEN → FINISHED;
//! each preemption adds PREEMPTED → SCHEDULED(RESUME). FINISHED comes exactly once, on every path.
//!
//! The OpenTelemetry observer (in `wayfinder-trace`) makes the `llm_core` span from the carrier
//! at QUEUED and ends it at FINISHED. With no observer the engine builds no events and keeps no
//! carrier: there is no per-request tracing state at all — except, for a request that asked
//! for them, its [`JourneyMark`]s, which the API's journey history gets back with the
//! request's `Finished` output.

use crate::request::Carrier;
use crate::scheduler::{PreemptReason, ScheduleKind};
use crate::sequence::{FinishStatus, Phase, SeqId, Sequence};

/// Which journey event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum JourneyEventKind {
    /// The scheduler accepted the request.
    Queued,
    /// WAITING or PREEMPTED → RUNNING.
    Scheduled(ScheduleKind),
    /// The first output token was produced.
    FirstToken,
    /// Taken off the running set.
    Preempted(PreemptReason),
    /// Any ending.
    Finished(FinishStatus),
}

impl JourneyEventKind {
    /// The contract's `event.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Scheduled(_) => "SCHEDULED",
            Self::FirstToken => "FIRST_TOKEN",
            Self::Preempted(_) => "PREEMPTED",
            Self::Finished(_) => "FINISHED",
        }
    }
}

/// One journey event as a request that asked for its journey
/// ([`crate::RequestBuilder::journey`]) gets it back in [`crate::FinishedOutput::journey`]:
/// what the API process's journey history shows of the engine's side, in either engine mode.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct JourneyMark {
    /// Which event (with its schedule kind, preemption reason or finish status).
    pub kind: JourneyEventKind,
    /// Engine monotonic clock, seconds.
    pub ts: f64,
    /// Scheduler steps begun so far.
    pub step: u64,
    /// Prompt tokens computed so far (high-water mark).
    pub prefill_done_tokens: usize,
    /// Output tokens so far.
    pub decode_done_tokens: usize,
}

/// The fields every journey event carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JourneyFields {
    /// Engine monotonic clock, seconds (`ts.monotonic`).
    pub ts_monotonic: f64,
    /// Scheduler steps begun so far (`scheduler.step`).
    pub scheduler_step: u64,
    /// `phase`.
    pub phase: Phase,
    /// Prompt tokens computed so far, a high-water mark (`prefill.done_tokens`).
    pub prefill_done_tokens: usize,
    /// Prompt length (`prefill.total_tokens`).
    pub prefill_total_tokens: usize,
    /// Output tokens so far (`decode.done_tokens`).
    pub decode_done_tokens: usize,
    /// The output limit (`decode.max_tokens`).
    pub decode_max_tokens: usize,
    /// Preemptions so far (`num_preemptions`).
    pub num_preemptions: u32,
    /// Prompt tokens the prefix cache supplied at the first scheduling
    /// (`prefix_cache.hit_tokens`, which the contract puts on SCHEDULED(FIRST) only).
    pub prefix_cache_hit_tokens: usize,
}

impl JourneyFields {
    /// The fields of `seq` at time `now`, step `step`, with `phase` (the phase *before* a
    /// transition, for PREEMPTED and FINISHED).
    pub fn of(seq: &Sequence, phase: Phase, step: u64, now: f64, max_model_len: usize) -> Self {
        Self {
            ts_monotonic: now,
            scheduler_step: step,
            phase,
            prefill_done_tokens: seq.prefill_done_tokens(),
            prefill_total_tokens: seq.num_prompt_tokens(),
            decode_done_tokens: seq.num_output_tokens(),
            decode_max_tokens: seq.max_output_tokens(max_model_len),
            num_preemptions: seq.num_preemptions(),
            prefix_cache_hit_tokens: seq.num_cached_tokens(),
        }
    }

    /// `ts.monotonic_ns`: `round(ts.monotonic * 1e9)`.
    pub fn ts_monotonic_ns(&self) -> i64 {
        (self.ts_monotonic * 1e9).round() as i64
    }
}

/// One journey event.
#[derive(Debug, Clone, Copy)]
pub struct JourneyEvent<'a> {
    /// The engine's id for the request (stable across its events; key per-request state by it).
    pub seq_id: SeqId,
    /// The client's request id (`gen_ai.request.id`).
    pub request_id: &'a str,
    /// The request's trace-context carrier, as the API layer sent it.
    pub carrier: &'a Carrier,
    /// Which event.
    pub kind: JourneyEventKind,
    /// Its fields.
    pub fields: JourneyFields,
}

/// How much an observer wants to hear about one scheduler step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StepDetail {
    /// Nothing (the default): the engine builds no report.
    #[default]
    Skip,
    /// A [`StepReport`] with the batch's figures and its requests' ids.
    Summary,
    /// The same; the observer also wants each request's snapshot.
    Rich,
}

/// One request of a reported step, as it was when the step was scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRequest {
    /// The engine's id.
    pub seq_id: SeqId,
    /// The client's request id.
    pub request_id: String,
    /// `PREFILL` or `DECODE` in this step.
    pub phase: Phase,
    /// Prompt length.
    pub num_prompt_tokens: usize,
    /// Tokens whose KV was computed before this step.
    pub num_computed_tokens: usize,
    /// Output tokens before this step.
    pub num_output_tokens: usize,
    /// Preemptions so far.
    pub num_preemptions: u32,
    /// Tokens computed for it in this step.
    pub scheduled_tokens: usize,
    /// KV blocks it holds.
    pub kv_blocks: usize,
}

/// What happened in one scheduler step, for step tracing.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport<'a> {
    /// The step's number (`scheduler.step` of events in it).
    pub step: u64,
    /// What the observer asked for.
    pub detail: StepDetail,
    /// When the step began and ended (engine monotonic seconds).
    pub start: f64,
    /// When it ended.
    pub end: f64,
    /// Requests running as the step ended.
    pub running_depth: usize,
    /// Requests waiting as the step ended.
    pub waiting_depth: usize,
    /// Requests prefilling in this step.
    pub num_prefill_reqs: usize,
    /// Requests decoding in this step.
    pub num_decode_reqs: usize,
    /// Prompt tokens computed.
    pub prefill_tokens: usize,
    /// Decode tokens computed.
    pub decode_tokens: usize,
    /// Requests that finished in this step.
    pub num_finished: usize,
    /// Requests preempted in this step.
    pub num_preempted: usize,
    /// KV blocks in the pool.
    pub kv_blocks_total: usize,
    /// KV blocks free after the step.
    pub kv_blocks_free: usize,
    /// The step's requests.
    pub requests: &'a [StepRequest],
}

/// Receives journey events on the engine thread. Must be quick: it runs inside the step.
pub trait JourneyObserver: Send {
    /// Called for every journey event, in order.
    fn on_event(&mut self, event: &JourneyEvent<'_>);

    /// Called as step `step` begins: how much to report about it. Default: nothing.
    fn step_detail(&mut self, _step: u64) -> StepDetail {
        StepDetail::Skip
    }

    /// Called as a step ends, when [`JourneyObserver::step_detail`] asked for it, after the
    /// step's journey events.
    fn on_step(&mut self, _report: &StepReport<'_>) {}
}
