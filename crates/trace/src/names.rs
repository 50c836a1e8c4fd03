//! Every name of the journey contract (`shared/JOURNEY_CONTRACT.md`), in one place: spans,
//! scopes, events, attributes, reasons and carrier keys. Change one only together with the
//! contract, the docs and the tests.

/// The API layer's span.
pub const SPAN_REQUEST: &str = "llm_request";
/// The engine core's span.
pub const SPAN_CORE: &str = "llm_core";
/// One sampled scheduler step.
pub const SPAN_STEP: &str = "scheduler_step";

/// Instrumentation scopes: these three and no others.
pub mod scope {
    /// The HTTP/API layer.
    pub const API: &str = "wayfinder.api";
    /// The engine core's scheduler.
    pub const SCHEDULER: &str = "wayfinder.scheduler";
    /// Optional step tracing.
    pub const STEP: &str = "wayfinder.scheduler.step";
    /// All of them.
    pub const ALL: [&str; 3] = [API, SCHEDULER, STEP];
}

/// Events of `llm_request`.
pub mod api_event {
    /// The request was received.
    pub const ARRIVED: &str = "api.ARRIVED";
    /// The validated, tokenized request was submitted to the engine core.
    pub const HANDOFF_TO_CORE: &str = "api.HANDOFF_TO_CORE";
    /// The first output came back from the engine core.
    pub const FIRST_RESPONSE_FROM_CORE: &str = "api.FIRST_RESPONSE_FROM_CORE";
    /// The response was completely sent.
    pub const DEPARTED: &str = "api.DEPARTED";
    /// Any other ending.
    pub const ABORTED: &str = "api.ABORTED";
}

/// Events of `llm_core` are `journey.` + the `event.type` value.
pub const JOURNEY_EVENT_PREFIX: &str = "journey.";

/// The event of a `scheduler_step` span for each request of a rich step.
pub const STEP_REQUEST_SNAPSHOT: &str = "step.REQUEST_SNAPSHOT";

/// Attribute keys.
pub mod attr {
    // On every `llm_request` event.
    /// Monotonic seconds of an API event.
    pub const EVENT_TS_MONOTONIC: &str = "event.ts.monotonic";
    // On `api.ABORTED`.
    /// Why the request ended early.
    pub const REASON: &str = "reason";
    /// What went wrong.
    pub const ERROR: &str = "error";
    /// The error's class, on an aborted span.
    pub const ERROR_TYPE: &str = "error.type";

    // `llm_request` attributes.
    /// The id returned to the client; also on `llm_core`.
    pub const REQUEST_ID: &str = "gen_ai.request.id";
    /// Sampling temperature.
    pub const TEMPERATURE: &str = "gen_ai.request.temperature";
    /// Nucleus sampling.
    pub const TOP_P: &str = "gen_ai.request.top_p";
    /// The output limit in force.
    pub const MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// Choices asked for.
    pub const N: &str = "gen_ai.request.n";
    /// Prompt tokens (older name).
    pub const PROMPT_TOKENS: &str = "gen_ai.usage.prompt_tokens";
    /// Completion tokens over all choices (older name).
    pub const COMPLETION_TOKENS: &str = "gen_ai.usage.completion_tokens";
    /// Prompt tokens (current semantic-convention name).
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Completion tokens (current semantic-convention name).
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// Prompt tokens served from the prefix cache (0 when none), summed over choices.
    pub const CACHE_READ_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    /// The model that answered.
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    /// The model asked for.
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    /// The response id.
    pub const RESPONSE_ID: &str = "gen_ai.response.id";
    /// Seconds from engine acceptance to first scheduling.
    pub const TIME_IN_QUEUE: &str = "gen_ai.latency.time_in_queue";
    /// Seconds from arrival to the first token.
    pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai.latency.time_to_first_token";
    /// Seconds from arrival to departure.
    pub const E2E: &str = "gen_ai.latency.e2e";
    /// Seconds of prefill.
    pub const TIME_IN_MODEL_PREFILL: &str = "gen_ai.latency.time_in_model_prefill";
    /// Seconds of decode.
    pub const TIME_IN_MODEL_DECODE: &str = "gen_ai.latency.time_in_model_decode";
    /// Seconds of prefill and decode.
    pub const TIME_IN_MODEL_INFERENCE: &str = "gen_ai.latency.time_in_model_inference";
    /// `llm_core`: the choice's index in its API request (0 when `n` = 1).
    pub const CHOICE_INDEX: &str = "wayfinder.choice.index";
    /// `chat` or `text_completion`.
    pub const OPERATION_NAME: &str = "gen_ai.operation.name";
    /// `wayfinder`.
    pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
    /// Finish reasons, one per choice.
    pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// Streaming or not.
    pub const STREAM: &str = "gen_ai.request.stream";
    /// The request's seed, when given.
    pub const SEED: &str = "gen_ai.request.seed";

    // On every `journey.*` event.
    /// `QUEUED`, `SCHEDULED`, …
    pub const EVENT_TYPE: &str = "event.type";
    /// Engine monotonic seconds.
    pub const TS_MONOTONIC: &str = "ts.monotonic";
    /// The same in integer nanoseconds.
    pub const TS_MONOTONIC_NS: &str = "ts.monotonic_ns";
    /// Scheduler steps begun so far.
    pub const SCHEDULER_STEP: &str = "scheduler.step";
    /// `WAITING`, `PREFILL` or `DECODE`.
    pub const PHASE: &str = "phase";
    /// Prompt tokens computed so far (high-water mark).
    pub const PREFILL_DONE_TOKENS: &str = "prefill.done_tokens";
    /// Prompt length.
    pub const PREFILL_TOTAL_TOKENS: &str = "prefill.total_tokens";
    /// Output tokens so far.
    pub const DECODE_DONE_TOKENS: &str = "decode.done_tokens";
    /// The output limit.
    pub const DECODE_MAX_TOKENS: &str = "decode.max_tokens";
    /// Preemptions so far.
    pub const NUM_PREEMPTIONS: &str = "num_preemptions";
    /// `FIRST` or `RESUME`, on `journey.SCHEDULED`.
    pub const SCHEDULE_KIND: &str = "schedule.kind";
    /// Prompt tokens the prefix cache supplied, on `journey.SCHEDULED` with kind `FIRST`.
    pub const PREFIX_CACHE_HIT_TOKENS: &str = "prefix_cache.hit_tokens";
    /// `kv_cache_full` or `priority`, on `journey.PREEMPTED`.
    pub const PREEMPT_REASON: &str = "preempt.reason";
    /// `stopped`, `length`, `aborted`, `ignored` or `error`, on `journey.FINISHED`.
    pub const FINISH_STATUS: &str = "finish.status";

    // `scheduler_step`.
    /// The step's number.
    pub const STEP_ID: &str = "step.id";
    /// Its duration.
    pub const STEP_DURATION_US: &str = "step.duration_us";
    /// Requests running after scheduling.
    pub const QUEUE_RUNNING_DEPTH: &str = "queue.running_depth";
    /// Requests waiting after scheduling.
    pub const QUEUE_WAITING_DEPTH: &str = "queue.waiting_depth";
    /// Requests prefilling this step.
    pub const BATCH_NUM_PREFILL_REQS: &str = "batch.num_prefill_reqs";
    /// Requests decoding this step.
    pub const BATCH_NUM_DECODE_REQS: &str = "batch.num_decode_reqs";
    /// Tokens computed this step.
    pub const BATCH_SCHEDULED_TOKENS: &str = "batch.scheduled_tokens";
    /// Prompt tokens computed this step.
    pub const BATCH_PREFILL_TOKENS: &str = "batch.prefill_tokens";
    /// Decode tokens computed this step.
    pub const BATCH_DECODE_TOKENS: &str = "batch.decode_tokens";
    /// Requests that finished this step.
    pub const BATCH_NUM_FINISHED: &str = "batch.num_finished";
    /// Requests preempted this step.
    pub const BATCH_NUM_PREEMPTED: &str = "batch.num_preempted";
    /// KV blocks in the pool.
    pub const KV_BLOCKS_TOTAL: &str = "kv.blocks_total";
    /// KV blocks free.
    pub const KV_BLOCKS_FREE: &str = "kv.blocks_free";
    /// Used / total.
    pub const KV_USAGE_RATIO: &str = "kv.usage_ratio";

    // `step.REQUEST_SNAPSHOT`.
    /// The request's id.
    pub const SNAP_REQUEST_ID: &str = "request.id";
    /// Its phase.
    pub const SNAP_PHASE: &str = "request.phase";
    /// Its prompt length.
    pub const SNAP_NUM_PROMPT_TOKENS: &str = "request.num_prompt_tokens";
    /// Tokens with KV computed.
    pub const SNAP_NUM_COMPUTED_TOKENS: &str = "request.num_computed_tokens";
    /// Output tokens.
    pub const SNAP_NUM_OUTPUT_TOKENS: &str = "request.num_output_tokens";
    /// Preemptions.
    pub const SNAP_NUM_PREEMPTIONS: &str = "request.num_preemptions";
    /// Tokens scheduled this step.
    pub const SNAP_SCHEDULED_TOKENS: &str = "request.scheduled_tokens_this_step";
    /// KV blocks it holds.
    pub const SNAP_KV_BLOCKS: &str = "kv.blocks_allocated";

    // Resource.
    /// `api`, `engine` or `all`.
    pub const PROCESS_ROLE: &str = "wayfinder.process.role";
}

/// Values of `gen_ai.operation.name`.
pub mod operation {
    /// `POST /v1/chat/completions`.
    pub const CHAT: &str = "chat";
    /// `POST /v1/completions`.
    pub const TEXT_COMPLETION: &str = "text_completion";
}

/// Values of `api.ABORTED`'s `reason`.
pub mod reason {
    /// The client went away.
    pub const CLIENT_DISCONNECT: &str = "client_disconnect";
    /// The request was invalid.
    pub const VALIDATION_ERROR: &str = "validation_error";
    /// The server was full.
    pub const OVERLOADED: &str = "overloaded";
    /// The engine is down or shutting down.
    pub const ENGINE_UNAVAILABLE: &str = "engine_unavailable";
    /// The engine failed while generating.
    pub const GENERATION_ERROR: &str = "generation_error";
    /// A deadline passed.
    pub const TIMEOUT: &str = "timeout";
    /// Anything else.
    pub const INTERNAL_ERROR: &str = "internal_error";
}

/// The carrier key that tells the engine the API layer sampled the request in.
pub const SAMPLED_KEY: &str = "x-wayfinder-journey-sampled";

/// The carrier key with the API layer's request id, so that `llm_core` records the same
/// `gen_ai.request.id` as `llm_request` (an engine request's own id adds the choice index).
pub const REQUEST_ID_KEY: &str = "x-wayfinder-request-id";

/// The carrier key with the choice's index in its API request (`wayfinder.choice.index` of
/// `llm_core`), so that the `n` engine requests of one API request can be told apart.
pub const CHOICE_INDEX_KEY: &str = "x-wayfinder-choice-index";

/// The response header that names a traced request's `llm_request` span (W3C Trace Context
/// Level 2): `00-<trace id>-<span id>-<flags>`.
pub const TRACE_RESPONSE: &str = "traceresponse";

/// `gen_ai.provider.name`'s value.
pub const PROVIDER: &str = "wayfinder";
