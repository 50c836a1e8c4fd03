//! The engine loop: one OS thread that owns the scheduler (with its block manager), the executor
//! and the journey observer, and talks to the rest of the process only through channels.
//!
//! Each turn of the loop first drains the command channel (add, abort, stats, shutdown), then
//! runs one step: schedule → build the batch → execute → commit → sample → append → emit → free.
//! With nothing to do it blocks on the channel, so an idle engine costs nothing.
//!
//! Every request ends with exactly one [`RequestOutput::Finished`] on its stream and exactly one
//! FINISHED journey event: when it stops or hits its length, when it is aborted (by
//! [`crate::EngineHandle::abort`], by dropping its stream, or by shutdown), when its prompt can never
//! fit, when it holds a token id outside the model's vocabulary, when the executor fails, and
//! when the loop panics: `EngineLoop::recover` then ends every live request with `error`,
//! starts a fresh scheduler (the executor is kept: its KV contents belong to no one any more)
//! and the loop goes on; the handle reports the engine unhealthy meanwhile.

use std::panic::{AssertUnwindSafe, catch_unwind};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::{mpsc as async_mpsc, oneshot};

use crate::clock::monotonic_now;
use crate::executor::{Batch, Executor, ExecutorError, Logits};
use crate::journey::{
    JourneyEvent, JourneyEventKind, JourneyFields, JourneyMark, JourneyObserver, StepDetail,
    StepReport, StepRequest,
};
use crate::output::{FinishedOutput, RequestOutput, TokenOutput, Usage};
use crate::request::EngineRequest;
use crate::sampling::Sampler;
use crate::scheduler::{AddOutcome, Scheduler, SchedulerConfig, SchedulerOutput};
use crate::sequence::{FinishStatus, Phase, RequestTimestamps, SeqId, Sequence};

use crate::scheduler::ConfigError;

/// Why the engine could not take a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The engine thread has stopped (shut down, or died).
    #[error("the engine is not running")]
    NotRunning,
    /// The engine thread could not be started.
    #[error("could not start the engine thread: {0}")]
    Spawn(String),
}

/// A snapshot of the engine's load, taken on the engine thread between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct EngineStats {
    /// Requests in the running set.
    pub num_running: usize,
    /// Requests waiting or preempted.
    pub num_waiting: usize,
    /// KV blocks in the pool.
    pub num_total_blocks: usize,
    /// KV blocks free.
    pub num_free_blocks: usize,
    /// Scheduler steps begun.
    pub num_steps: u64,
}

/// What an [`crate::EngineHandle`] asks of its engine.
#[derive(Debug)]
pub enum EngineCommand {
    /// Run a request; send its outputs (tokens, then one `Finished`) on `tx`. Dropping `tx`
    /// without a `Finished` tells the caller the engine went away.
    Add {
        /// The engine-wide id the handle gave it.
        seq: SeqId,
        /// The request.
        request: Box<EngineRequest>,
        /// Its output channel.
        tx: async_mpsc::UnboundedSender<RequestOutput>,
    },
    /// Abort a request by engine id (its stream was dropped).
    Abort(SeqId),
    /// Abort a request by client id.
    AbortById(String),
    /// End a request by client id as `stopped`: the API layer found a stop string in its text
    /// (the engine does not see text).
    StopById(String),
    /// Reply with the engine's load.
    Stats(oneshot::Sender<EngineStats>),
    /// Stop.
    Shutdown,
}

/// Everything the engine needs besides its executor and observer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineConfig {
    /// Scheduler and KV-cache sizing.
    pub scheduler: SchedulerConfig,
    /// The model's end-of-sequence tokens (honoured unless a request sets `ignore_eos`).
    pub eos_token_ids: Vec<u32>,
    /// Seeds the RNGs of requests without a seed of their own; random when `None`.
    pub seed: Option<u64>,
}

/// A live request's link to its caller.
struct Client {
    tx: UnboundedSender<RequestOutput>,
    rng: StdRng,
}

/// What a command asks of the loop.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

pub(crate) struct EngineLoop {
    scheduler: Scheduler,
    executor: Box<dyn Executor>,
    observer: Option<Box<dyn JourneyObserver>>,
    /// Journey marks of the live requests that asked for them.
    marks: HashMap<SeqId, Vec<JourneyMark>>,
    clients: HashMap<SeqId, Client>,
    /// Client request id → engine id, for abort by id and duplicate detection.
    ids: HashMap<String, SeqId>,
    eos_token_ids: Vec<u32>,
    seeds: StdRng,
    sampler: Sampler,
    batch: Batch,
    /// Requests that ended since the current step began (for step reports).
    finished_in_step: usize,
}

impl EngineLoop {
    pub(crate) fn new(
        config: EngineConfig,
        executor: Box<dyn Executor>,
        observer: Option<Box<dyn JourneyObserver>>,
    ) -> Result<Self, EngineError> {
        let scheduler = Scheduler::new(config.scheduler)?;
        Ok(Self {
            scheduler,
            executor,
            observer,
            marks: HashMap::new(),
            clients: HashMap::new(),
            ids: HashMap::new(),
            eos_token_ids: config.eos_token_ids,
            seeds: config
                .seed
                .map_or_else(StdRng::from_os_rng, StdRng::seed_from_u64),
            sampler: Sampler::default(),
            batch: Batch::default(),
            finished_in_step: 0,
        })
    }

    /// Runs until shutdown or until every handle and stream is gone. A panic inside the loop
    /// is caught: the engine is unhealthy (`healthy` false) for [`RECOVERY_PAUSE`] while
    /// [`EngineLoop::recover`] fails what was in flight, then it serves again.
    pub(crate) fn run_supervised(
        mut self,
        commands: &Receiver<EngineCommand>,
        healthy: &AtomicBool,
    ) {
        loop {
            match catch_unwind(AssertUnwindSafe(|| self.run(commands))) {
                Ok(()) => break,
                Err(panic) => {
                    healthy.store(false, Ordering::Release);
                    let reason = panic_message(panic.as_ref());
                    tracing::error!(%reason, "the engine loop panicked; failing its requests and recovering");
                    self.recover(&reason);
                    std::thread::sleep(RECOVERY_PAUSE);
                    healthy.store(true, Ordering::Release);
                }
            }
        }
        self.abort_all();
    }

    /// Runs until shutdown or until every handle and stream is gone.
    fn run(&mut self, commands: &Receiver<EngineCommand>) {
        loop {
            let command = if self.scheduler.has_work() {
                match commands.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => break,
                }
            } else {
                match commands.recv() {
                    Ok(c) => Some(c),
                    Err(_) => break,
                }
            };
            match command {
                Some(c) => {
                    if self.handle(c) == Flow::Stop {
                        break;
                    }
                }
                None => self.step(),
            }
        }
    }

    /// After a panic: ends every live request with `error` (its journey too, where the
    /// scheduler still knows it) and starts over with an empty scheduler.
    fn recover(&mut self, reason: &str) {
        let error = format!("the engine failed and restarted: {reason}");
        let config = self.scheduler.config().clone();
        let clients: Vec<(SeqId, Client)> = self.clients.drain().collect();
        self.ids.clear();
        for (seq, client) in clients {
            let now = monotonic_now();
            // The scheduler may be half-way through a change; whatever it panics on is skipped.
            let ended = catch_unwind(AssertUnwindSafe(|| {
                self.scheduler.finish(seq, FinishStatus::Error, now)
            }))
            .ok()
            .flatten();
            let finished = match &ended {
                Some(s) => {
                    let _ = catch_unwind(AssertUnwindSafe(|| {
                        journey(
                            &mut self.observer,
                            &mut self.marks,
                            &self.scheduler,
                            s,
                            JourneyEventKind::Finished(FinishStatus::Error),
                            s.phase(),
                            now,
                        );
                    }));
                    FinishedOutput::of(s, FinishStatus::Error, Some(error.clone()))
                }
                None => FinishedOutput {
                    status: FinishStatus::Error,
                    usage: Usage::default(),
                    timestamps: RequestTimestamps {
                        finished: Some(now),
                        ..RequestTimestamps::default()
                    },
                    num_preemptions: 0,
                    error: Some(error.clone()),
                    journey: Vec::new(),
                    prefix_cache_queries: 0,
                },
            };
            let _ = client.tx.send(RequestOutput::Finished(finished));
        }
        self.scheduler =
            Scheduler::new(config).expect("the config was valid when the engine started");
        self.marks.clear();
        self.batch = Batch::default();
    }

    fn handle(&mut self, command: EngineCommand) -> Flow {
        match command {
            EngineCommand::Add { seq, request, tx } => self.add(seq, *request, tx),
            EngineCommand::Abort(seq) => self.finish(seq, FinishStatus::Aborted, None),
            EngineCommand::AbortById(id) => {
                if let Some(&seq) = self.ids.get(&id) {
                    self.finish(seq, FinishStatus::Aborted, None);
                }
            }
            EngineCommand::StopById(id) => {
                if let Some(&seq) = self.ids.get(&id) {
                    self.finish(seq, FinishStatus::Stopped, None);
                }
            }
            EngineCommand::Stats(reply) => {
                // The caller may have given up waiting; nothing to do then.
                let _ = reply.send(self.stats());
            }
            EngineCommand::Shutdown => return Flow::Stop,
        }
        Flow::Continue
    }

    fn stats(&self) -> EngineStats {
        let blocks = self.scheduler.block_manager();
        EngineStats {
            num_running: self.scheduler.num_running(),
            num_waiting: self.scheduler.num_waiting(),
            num_total_blocks: blocks.num_total_blocks(),
            num_free_blocks: blocks.num_free_blocks(),
            num_steps: self.scheduler.num_steps(),
        }
    }

    fn add(&mut self, seq: SeqId, mut request: EngineRequest, tx: UnboundedSender<RequestOutput>) {
        let now = monotonic_now();
        let vocab = self.executor.vocab_size();
        let refusal = if self.ids.contains_key(request.id()) {
            Some(format!("request id {:?} is already in use", request.id()))
        } else {
            request
                .prompt()
                .iter()
                .find(|&&t| t as usize >= vocab)
                .map(|t| {
                    format!(
                        "the prompt holds token id {t}, outside the model's vocabulary of {vocab}"
                    )
                })
        };
        if let Some(error) = refusal {
            let rejection = FinishedOutput {
                status: FinishStatus::Error,
                usage: Usage {
                    prompt_tokens: request.prompt().len(),
                    ..Usage::default()
                },
                timestamps: RequestTimestamps {
                    arrival: request.arrival_time(),
                    queued: now,
                    finished: Some(now),
                    ..RequestTimestamps::default()
                },
                num_preemptions: 0,
                error: Some(error),
                journey: Vec::new(),
                prefix_cache_queries: 0,
            };
            let _ = tx.send(RequestOutput::Finished(rejection));
            return;
        }
        if self.observer.is_none() {
            // No observer, no per-request tracing state.
            drop(request.take_carrier());
        }
        let rng = StdRng::seed_from_u64(
            request
                .sampling()
                .seed
                .unwrap_or_else(|| self.seeds.random()),
        );
        let request_id = request.id().to_owned();
        if request.wants_journey() {
            self.marks.insert(seq, Vec::new());
        }
        let client = Client { tx, rng };
        match self.scheduler.add(seq, request, now) {
            AddOutcome::Queued => {
                let s = self.scheduler.get(seq).expect("just queued");
                journey(
                    &mut self.observer,
                    &mut self.marks,
                    &self.scheduler,
                    s,
                    JourneyEventKind::Queued,
                    Phase::Waiting,
                    now,
                );
                self.ids.insert(request_id, seq);
                self.clients.insert(seq, client);
            }
            AddOutcome::Ignored(s) => {
                journey(
                    &mut self.observer,
                    &mut self.marks,
                    &self.scheduler,
                    &s,
                    JourneyEventKind::Queued,
                    Phase::Waiting,
                    now,
                );
                self.ended(&s, FinishStatus::Ignored, None, &client);
            }
        }
    }

    fn step(&mut self) {
        let now = monotonic_now();
        let next_step = self.scheduler.num_steps() + 1;
        let detail = self
            .observer
            .as_mut()
            .map_or(StepDetail::Skip, |o| o.step_detail(next_step));
        self.finished_in_step = 0;
        let out = self.scheduler.schedule(now);
        self.journey_transitions(&out, now);
        if out.scheduled.is_empty() {
            debug_assert!(false, "a step with live requests scheduled nothing");
            return;
        }
        let step_requests = if detail == StepDetail::Skip {
            Vec::new()
        } else {
            self.step_requests(&out)
        };
        let mut batch = std::mem::take(&mut self.batch);
        batch.fill(&out, &self.scheduler);
        let result = self.executor.execute(&batch).and_then(|logits| {
            let rows = batch.num_logits_rows();
            if logits.num_rows() == rows && logits.vocab_size() == self.executor.vocab_size() {
                Ok(logits)
            } else {
                Err(ExecutorError::WrongLogits {
                    rows: logits.num_rows(),
                    vocab: logits.vocab_size(),
                    expected: rows,
                })
            }
        });
        match result {
            Ok(logits) => {
                self.scheduler.commit(&out);
                self.sample_and_emit(&batch, logits);
            }
            Err(e) => {
                tracing::error!(error = %e, step = out.step, "executor failed; ending the step's requests");
                for s in &out.scheduled {
                    self.finish(s.id, FinishStatus::Error, Some(e.to_string()));
                }
            }
        }
        self.batch = batch;
        if detail != StepDetail::Skip {
            self.report_step(&out, detail, now, &step_requests);
        }
    }

    /// The step's requests as scheduled (before it ran).
    fn step_requests(&self, out: &SchedulerOutput) -> Vec<StepRequest> {
        let blocks = self.scheduler.block_manager();
        out.scheduled
            .iter()
            .filter_map(|s| {
                let seq = self.scheduler.get(s.id)?;
                Some(StepRequest {
                    seq_id: s.id,
                    request_id: seq.request_id().to_owned(),
                    phase: seq.phase(),
                    num_prompt_tokens: seq.num_prompt_tokens(),
                    num_computed_tokens: seq.num_computed_tokens(),
                    num_output_tokens: seq.num_output_tokens(),
                    num_preemptions: seq.num_preemptions(),
                    scheduled_tokens: s.num_new_tokens,
                    kv_blocks: blocks.block_table(s.id).map_or(0, <[_]>::len),
                })
            })
            .collect()
    }

    fn report_step(
        &mut self,
        out: &SchedulerOutput,
        detail: StepDetail,
        start: f64,
        requests: &[StepRequest],
    ) {
        let Some(observer) = self.observer.as_mut() else {
            return;
        };
        let prefill = requests.iter().filter(|r| r.phase == Phase::Prefill);
        let decode = requests.iter().filter(|r| r.phase != Phase::Prefill);
        let blocks = self.scheduler.block_manager();
        observer.on_step(&StepReport {
            step: out.step,
            detail,
            start,
            end: monotonic_now(),
            running_depth: self.scheduler.num_running(),
            waiting_depth: self.scheduler.num_waiting(),
            num_prefill_reqs: prefill.clone().count(),
            num_decode_reqs: decode.clone().count(),
            prefill_tokens: prefill.map(|r| r.scheduled_tokens).sum(),
            decode_tokens: decode.map(|r| r.scheduled_tokens).sum(),
            num_finished: self.finished_in_step,
            num_preempted: out.preempted.len(),
            kv_blocks_total: blocks.num_total_blocks(),
            kv_blocks_free: blocks.num_free_blocks(),
            requests,
        });
    }

    fn sample_and_emit(&mut self, batch: &Batch, mut logits: Logits) {
        let now = monotonic_now();
        let mut next_row = 0;
        for bs in &batch.seqs {
            let rows = next_row..next_row + bs.logits_rows.len();
            next_row = rows.end;
            let id = bs.seq_id;
            let prompt_rows = if bs.needs_logits {
                rows.start..rows.end.saturating_sub(1).max(rows.start)
            } else {
                rows.clone()
            };
            if !prompt_rows.is_empty() {
                // Row `r` is of the token at batch index `bs.logits_rows.start + (r - start)`,
                // and gives the logprob of the token after it.
                let first_pos = bs.context_len - (bs.tokens.end - bs.logits_rows.start);
                self.emit_prompt_logprobs(id, &logits, prompt_rows, first_pos);
            }
            if !bs.needs_logits {
                continue;
            }
            let row = rows.end - 1;
            let (Some(seq), Some(client)) = (self.scheduler.get(id), self.clients.get_mut(&id))
            else {
                continue;
            };
            if seq.stop().max_tokens == 0 {
                // A prompt-logprobs request that generates nothing ends with its prefill.
                self.finish(id, FinishStatus::Length, None);
                continue;
            }
            let sampled = self.sampler.sample(
                logits.row_mut(row),
                seq.sampling(),
                seq.prompt(),
                seq.output(),
                &mut client.rng,
            );
            let token = TokenOutput {
                token_id: sampled.token,
                logprobs: sampled.logprobs,
            };
            let delivered = client.tx.send(RequestOutput::Token(token)).is_ok();
            let finished = self
                .scheduler
                .append_token(id, sampled.token, &self.eos_token_ids, now);
            let seq = finished
                .as_ref()
                .or_else(|| self.scheduler.get(id))
                .expect("live");
            if seq.num_output_tokens() == 1 {
                journey(
                    &mut self.observer,
                    &mut self.marks,
                    &self.scheduler,
                    seq,
                    JourneyEventKind::FirstToken,
                    Phase::Decode,
                    now,
                );
            }
            if let Some(done) = finished {
                let status = done.finish_status().expect("finished");
                self.close(&done, status, None);
            } else if !delivered {
                // The stream is gone; its drop also sends an abort, which will find nothing.
                self.finish(id, FinishStatus::Aborted, None);
            }
        }
    }

    /// Sends the prompt logprobs of `rows`, whose first is of prompt position `first_pos`.
    fn emit_prompt_logprobs(
        &mut self,
        id: SeqId,
        logits: &Logits,
        rows: std::ops::Range<usize>,
        first_pos: usize,
    ) {
        let (Some(seq), Some(client)) = (self.scheduler.get(id), self.clients.get(&id)) else {
            return;
        };
        let n = seq.sampling().prompt_logprobs.unwrap_or(0);
        let prompt = seq.prompt();
        let entries: Vec<_> = rows
            .enumerate()
            .map(|(k, row)| {
                let next = prompt[first_pos + k + 1];
                self.sampler.logprobs_of(logits.row(row), next, n)
            })
            .collect();
        let next = first_pos + 1 + entries.len();
        let delivered = client
            .tx
            .send(RequestOutput::PromptLogprobs(entries))
            .is_ok();
        self.scheduler.sent_prompt_logprobs(id, next);
        if !delivered {
            self.finish(id, FinishStatus::Aborted, None);
        }
    }

    fn journey_transitions(&mut self, out: &SchedulerOutput, now: f64) {
        if self.observer.is_none() && self.marks.is_empty() {
            return;
        }
        for p in &out.preempted {
            let seq = self.scheduler.get(p.id).expect("preempted request is live");
            journey(
                &mut self.observer,
                &mut self.marks,
                &self.scheduler,
                seq,
                JourneyEventKind::Preempted(p.reason),
                p.phase,
                now,
            );
        }
        for s in &out.scheduled {
            if let Some(kind) = s.transition {
                let seq = self.scheduler.get(s.id).expect("scheduled request is live");
                journey(
                    &mut self.observer,
                    &mut self.marks,
                    &self.scheduler,
                    seq,
                    JourneyEventKind::Scheduled(kind),
                    seq.phase(),
                    now,
                );
            }
        }
    }

    /// Ends a live request with `status` (no-op if it already ended).
    fn finish(&mut self, id: SeqId, status: FinishStatus, error: Option<String>) {
        if let Some(seq) = self.scheduler.finish(id, status, monotonic_now()) {
            self.close(&seq, status, error);
        }
    }

    /// Reports a request that left the scheduler and forgets its client.
    fn close(&mut self, seq: &Sequence, status: FinishStatus, error: Option<String>) {
        self.ids.remove(seq.request_id());
        if let Some(client) = self.clients.remove(&seq.id()) {
            self.ended(seq, status, error, &client);
        }
    }

    fn ended(
        &mut self,
        seq: &Sequence,
        status: FinishStatus,
        error: Option<String>,
        client: &Client,
    ) {
        self.finished_in_step += 1;
        let now = seq.timestamps().finished.unwrap_or_else(monotonic_now);
        journey(
            &mut self.observer,
            &mut self.marks,
            &self.scheduler,
            seq,
            JourneyEventKind::Finished(status),
            seq.phase(),
            now,
        );
        let mut finished = FinishedOutput::of(seq, status, error);
        finished.journey = self.marks.remove(&seq.id()).unwrap_or_default();
        let _ = client.tx.send(RequestOutput::Finished(finished));
    }

    fn abort_all(&mut self) {
        let live: Vec<SeqId> = self.clients.keys().copied().collect();
        for id in live {
            self.finish(id, FinishStatus::Aborted, None);
        }
    }
}

/// How long a recovered engine reports itself unhealthy before serving again, so that health
/// checks see the failure.
pub const RECOVERY_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);

/// The text of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Tells the observer, if any, about `kind` for `seq`.
fn journey(
    observer: &mut Option<Box<dyn JourneyObserver>>,
    marks: &mut HashMap<SeqId, Vec<JourneyMark>>,
    scheduler: &Scheduler,
    seq: &Sequence,
    kind: JourneyEventKind,
    phase: Phase,
    now: f64,
) {
    if let Some(m) = marks.get_mut(&seq.id()) {
        m.push(JourneyMark {
            kind,
            ts: now,
            step: scheduler.num_steps(),
            prefill_done_tokens: seq.prefill_done_tokens(),
            decode_done_tokens: seq.num_output_tokens(),
        });
    }
    let Some(observer) = observer.as_mut() else {
        return;
    };
    let fields = JourneyFields::of(
        seq,
        phase,
        scheduler.num_steps(),
        now,
        scheduler.config().max_model_len,
    );
    observer.on_event(&JourneyEvent {
        seq_id: seq.id(),
        request_id: seq.request_id(),
        carrier: seq.carrier(),
        kind,
        fields,
    });
}
