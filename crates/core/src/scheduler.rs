//! The continuous-batching scheduler, in the manner of vLLM's v1 scheduler.
//!
//! Each step has one token budget (`max_num_batched_tokens`) shared by every request, and at most
//! `max_num_seqs` requests run at once. A request's work in a step is simply its *pending* tokens
//! (known tokens whose KV is not yet computed), capped by what is left of the budget: a new prompt
//! is prefilled over as many steps as the budget requires (chunked prefill), a decoding request
//! has one pending token, and a resumed request recomputes its prompt and output. Prefill and
//! decode are one mechanism.
//!
//! A step:
//! 1. Under the priority policy, running requests of strictly lower priority than the best
//!    waiting one are preempted (reason `priority`) while that one cannot be admitted.
//! 2. Running requests, in order, get their pending tokens. When their KV blocks cannot be grown,
//!    a victim is preempted by recompute (reason `kv_cache_full`) — the latest arrival under
//!    FCFS, the lowest priority (then latest arrival) under the priority policy — and its blocks
//!    freed; if the victim is the request itself, it stops there.
//! 3. If step 2 preempted nothing, waiting requests are admitted in queue order while budget,
//!    `max_num_seqs` and free blocks allow. The waiting queue puts preempted requests ahead of new
//!    arrivals (under the priority policy: within each priority level). The head of the queue
//!    blocks the rest (no overtaking), so that the order is fair.
//!
//! With the prefix cache on (`enable_prefix_caching`), a request being admitted — new or
//! resumed — first takes the longest run of its leading full blocks that the cache holds
//! ([`BlockManager::find_cached_prefix`]), up to all but its last known token (and none whose
//! prompt logprob is owed): those tokens count as computed and only the rest is scheduled. After
//! each step [`Scheduler::commit`] enters the blocks it completed into the cache, so a finished,
//! aborted or preempted request leaves its full blocks findable until evicted.
//!
//! The scheduler is pure and synchronous: time comes in as an argument, and everything it decides
//! comes out in a [`SchedulerOutput`]. The caller runs the batch, then calls
//! [`Scheduler::commit`], samples, and calls [`Scheduler::append_token`] / [`Scheduler::finish`].

use std::collections::BTreeMap;

use rustc_hash::FxHashMap as HashMap;

use crate::block_manager::{BlockId, BlockManager, DEFAULT_BLOCK_SIZE, PrefixKey};
use crate::request::{EngineRequest, Priority};
use crate::sequence::{FinishStatus, Phase, RequestStatus, SeqId, Sequence};

/// The order in which waiting requests are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SchedulingPolicy {
    /// First come, first served.
    #[default]
    Fcfs,
    /// Lower [`Priority`] values first, then arrival order; may preempt for priority.
    Priority,
}

/// Scheduler and KV-cache sizing.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// The most requests running at once.
    pub max_num_seqs: usize,
    /// The most tokens computed in one step, over all requests.
    pub max_num_batched_tokens: usize,
    /// The longest a request may grow (prompt + output).
    pub max_model_len: usize,
    /// Token slots per KV block.
    pub block_size: usize,
    /// KV blocks in the pool.
    pub num_blocks: usize,
    /// Admission order.
    pub policy: SchedulingPolicy,
    /// Reuse the KV of cached prompt prefixes (on by default, as in vLLM).
    pub enable_prefix_caching: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            max_num_seqs: 256,
            max_num_batched_tokens: 2048,
            max_model_len: 2048,
            block_size: DEFAULT_BLOCK_SIZE,
            num_blocks: 2048,
            policy: SchedulingPolicy::Fcfs,
            enable_prefix_caching: true,
        }
    }
}

/// A configuration the scheduler cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scheduler config: {0}")]
pub struct ConfigError(pub String);

impl SchedulerConfig {
    /// Checks that every setting is usable and that one request of `max_model_len` tokens fits
    /// in the KV pool (else a lone request could never finish).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("max_model_len", self.max_model_len),
            ("block_size", self.block_size),
            ("num_blocks", self.num_blocks),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError(format!("{name} must be positive")));
        }
        let capacity = self.num_blocks.saturating_mul(self.block_size);
        if self.max_model_len > capacity {
            return Err(ConfigError(format!(
                "max_model_len {} exceeds the KV cache capacity of {capacity} tokens \
                 ({} blocks of {}); lower max_model_len or give the cache more memory",
                self.max_model_len, self.num_blocks, self.block_size
            )));
        }
        Ok(())
    }
}

/// Why a request was taken off the running set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum PreemptReason {
    /// Its KV blocks were needed by a request ahead of it.
    KvCacheFull,
    /// A waiting request of higher priority needed room.
    Priority,
}

impl PreemptReason {
    /// The contract's name (`preempt.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KvCacheFull => "kv_cache_full",
            Self::Priority => "priority",
        }
    }
}

/// A request taken off the running set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preemption {
    /// The request.
    pub id: SeqId,
    /// Why.
    pub reason: PreemptReason,
    /// The phase it was in when preempted.
    pub phase: Phase,
}

/// Whether a scheduled request entered the running set this step, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ScheduleKind {
    /// First time it runs.
    First,
    /// Back after a preemption.
    Resume,
}

impl ScheduleKind {
    /// The contract's name (`schedule.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::First => "FIRST",
            Self::Resume => "RESUME",
        }
    }
}

/// One request's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledSeq {
    /// The request.
    pub id: SeqId,
    /// Tokens to compute this step, starting at its `num_computed_tokens`.
    pub num_new_tokens: usize,
    /// Set when the request entered the running set this step.
    pub transition: Option<ScheduleKind>,
}

/// What one call to [`Scheduler::schedule`] decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SchedulerOutput {
    /// The step's number (1 for the first step).
    pub step: u64,
    /// Requests in the batch, running ones first, in batch order.
    pub scheduled: Vec<ScheduledSeq>,
    /// Requests preempted this step, in order.
    pub preempted: Vec<Preemption>,
    /// Sum of `num_new_tokens`.
    pub num_scheduled_tokens: usize,
}

/// Outcome of [`Scheduler::add`].
#[derive(Debug)]
pub enum AddOutcome {
    /// Queued.
    Queued,
    /// Its prompt can never fit; finished as `ignored` without being queued.
    Ignored(Box<Sequence>),
}

/// Orders the waiting queue. Field order is the sort order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct WaitKey {
    /// 0 under FCFS.
    priority: Priority,
    /// 0 for preempted requests, 1 for new ones.
    class: u8,
    arrival_order: u64,
}

/// Owns every live request, the waiting queue, the running set and the block manager.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    blocks: BlockManager,
    seqs: HashMap<SeqId, Sequence>,
    waiting: BTreeMap<WaitKey, SeqId>,
    running: Vec<SeqId>,
    steps: u64,
    arrivals: u64,
}

impl Scheduler {
    /// A scheduler with an empty KV pool sized by `config`.
    pub fn new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            blocks: BlockManager::new(config.num_blocks, config.block_size),
            config,
            seqs: HashMap::default(),
            waiting: BTreeMap::new(),
            running: Vec::new(),
            steps: 0,
            arrivals: 0,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }
    /// The KV block manager.
    pub fn block_manager(&self) -> &BlockManager {
        &self.blocks
    }
    /// Steps begun so far.
    pub fn num_steps(&self) -> u64 {
        self.steps
    }
    /// Requests waiting or preempted.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    /// Requests in the running set.
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    /// Whether any request is live.
    pub fn has_work(&self) -> bool {
        !self.seqs.is_empty()
    }
    /// A live request.
    pub fn get(&self, id: SeqId) -> Option<&Sequence> {
        self.seqs.get(&id)
    }
    /// The running set, in order.
    pub fn running(&self) -> &[SeqId] {
        &self.running
    }

    /// Accepts a request at time `now`.
    pub fn add(&mut self, id: SeqId, request: EngineRequest, now: f64) -> AddOutcome {
        self.arrivals += 1;
        let root = self.blocks.hasher().root(request.cache_salt());
        let mut seq = Sequence::new(id, request, self.arrivals, now);
        seq.cache_root = root;
        // A prompt needs its own slots plus room for one generated token, unless it asks for
        // none (a prompt-logprobs request).
        let output_room = usize::from(seq.stop().max_tokens > 0);
        if seq.num_prompt_tokens() + output_room > self.config.max_model_len
            || self.blocks.blocks_for(seq.num_prompt_tokens()) > self.blocks.num_total_blocks()
        {
            seq.status = RequestStatus::Finished(FinishStatus::Ignored);
            seq.times.finished = Some(now);
            return AddOutcome::Ignored(Box::new(seq));
        }
        self.waiting.insert(self.wait_key(&seq), id);
        self.seqs.insert(id, seq);
        AddOutcome::Queued
    }

    /// Plans one step at time `now`. Allocates KV blocks for everything it schedules.
    pub fn schedule(&mut self, now: f64) -> SchedulerOutput {
        self.steps += 1;
        let mut out = SchedulerOutput {
            step: self.steps,
            ..SchedulerOutput::default()
        };
        let mut budget = self.config.max_num_batched_tokens;
        if self.config.policy == SchedulingPolicy::Priority {
            self.preempt_for_priority(&mut out);
        }
        self.schedule_running(&mut out, &mut budget);
        if !out
            .preempted
            .iter()
            .any(|p| p.reason == PreemptReason::KvCacheFull)
        {
            self.schedule_waiting(&mut out, &mut budget, now);
        }
        out.num_scheduled_tokens = self.config.max_num_batched_tokens - budget;
        out
    }

    /// Records that the step planned in `out` was computed, and enters the blocks it
    /// completed into the prefix cache.
    pub fn commit(&mut self, out: &SchedulerOutput) {
        for s in &out.scheduled {
            let Some(seq) = self.seqs.get_mut(&s.id) else {
                continue;
            };
            let bs = self.blocks.block_size();
            let full_before = seq.num_computed_tokens / bs;
            seq.advance(s.num_new_tokens);
            // Most steps of a decoding request fill no block: nothing to enter.
            if self.config.enable_prefix_caching && seq.num_computed_tokens / bs > full_before {
                let hasher = self.blocks.hasher();
                hasher.extend(&mut seq.block_hashes, seq.cache_root, &seq.tokens, bs);
                let key = PrefixKey {
                    root: seq.cache_root,
                    hashes: &seq.block_hashes,
                    tokens: &seq.tokens,
                };
                self.blocks.cache_blocks(s.id, key, seq.num_computed_tokens);
            }
        }
    }

    /// Appends a token sampled for `id` at `now`; when it ends the request (stop token, eos,
    /// length), the request is finished and returned.
    pub fn append_token(
        &mut self,
        id: SeqId,
        token: u32,
        eos_token_ids: &[u32],
        now: f64,
    ) -> Option<Sequence> {
        let seq = self.seqs.get_mut(&id)?;
        let status = seq.append_token(token, eos_token_ids, self.config.max_model_len, now)?;
        self.finish(id, status, now)
    }

    /// Records that `id`'s prompt logprobs were sent up to prompt token `next` (exclusive).
    pub fn sent_prompt_logprobs(&mut self, id: SeqId, next: usize) {
        if let Some(seq) = self.seqs.get_mut(&id) {
            seq.sent_prompt_logprobs(next);
        }
    }

    /// Ends a live request with `status`, frees its blocks and returns it.
    pub fn finish(&mut self, id: SeqId, status: FinishStatus, now: f64) -> Option<Sequence> {
        let mut seq = self.seqs.remove(&id)?;
        match seq.status {
            RequestStatus::Running => self.running.retain(|r| *r != id),
            RequestStatus::Waiting | RequestStatus::Preempted => {
                self.waiting.remove(&self.wait_key(&seq));
            }
            RequestStatus::Finished(_) => {}
        }
        self.blocks.free(id);
        seq.status = RequestStatus::Finished(status);
        seq.times.finished = Some(now);
        Some(seq)
    }

    /// Aborts a live request (see [`Scheduler::finish`]).
    pub fn abort(&mut self, id: SeqId, now: f64) -> Option<Sequence> {
        self.finish(id, FinishStatus::Aborted, now)
    }

    fn wait_key(&self, seq: &Sequence) -> WaitKey {
        WaitKey {
            priority: match self.config.policy {
                SchedulingPolicy::Fcfs => 0,
                SchedulingPolicy::Priority => seq.priority(),
            },
            class: u8::from(seq.status != RequestStatus::Preempted),
            arrival_order: seq.arrival_order,
        }
    }

    /// The victim order: under FCFS the latest arrival, under priority the lowest priority
    /// (largest value), then the latest arrival.
    fn victim_index(&self) -> Option<usize> {
        let key = |id: &SeqId| {
            let s = &self.seqs[id];
            match self.config.policy {
                SchedulingPolicy::Fcfs => (0, s.arrival_order),
                SchedulingPolicy::Priority => (s.priority(), s.arrival_order),
            }
        };
        (0..self.running.len()).max_by_key(|&i| key(&self.running[i]))
    }

    /// Takes `running[index]` off the running set by recompute and queues it to resume.
    fn preempt(&mut self, index: usize, reason: PreemptReason, out: &mut SchedulerOutput) {
        let id = self.running.remove(index);
        self.blocks.free(id);
        let seq = self.seqs.get_mut(&id).expect("running request is live");
        let phase = seq.phase();
        seq.preempt();
        let key = self.wait_key(&self.seqs[&id]);
        self.waiting.insert(key, id);
        out.preempted.push(Preemption { id, reason, phase });
    }

    /// What admitting waiting request `id` with `budget` left takes: its cached leading blocks
    /// (none with the cache off) and the tokens to compute after them this step.
    fn admission(&mut self, id: SeqId, budget: usize) -> (Vec<BlockId>, usize) {
        let bs = self.blocks.block_size();
        let seq = self.seqs.get_mut(&id).expect("waiting request is live");
        let hits = if self.config.enable_prefix_caching {
            let hasher = self.blocks.hasher();
            hasher.extend(&mut seq.block_hashes, seq.cache_root, &seq.tokens, bs);
            let key = PrefixKey {
                root: seq.cache_root,
                hashes: &seq.block_hashes,
                tokens: &seq.tokens,
            };
            self.blocks
                .find_cached_prefix(key, seq.max_cache_hit_tokens() / bs)
        } else {
            Vec::new()
        };
        let pending = seq.tokens.len() - hits.len() * bs;
        let n = pending.min(budget).min(seq.max_step_tokens());
        (hits, n)
    }

    fn preempt_for_priority(&mut self, out: &mut SchedulerOutput) {
        while let Some((key, &head)) = self.waiting.first_key_value() {
            let Some(victim) = self.victim_index() else {
                return;
            };
            let victim_priority = self.seqs[&self.running[victim]].priority();
            if key.priority >= victim_priority {
                return;
            }
            let (hits, head_tokens) = self.admission(head, self.config.max_num_batched_tokens);
            let admissible = self.running.len() < self.config.max_num_seqs
                && self.blocks.can_allocate_with_prefix(&hits, head_tokens);
            if admissible {
                return;
            }
            self.preempt(victim, PreemptReason::Priority, out);
        }
    }

    fn schedule_running(&mut self, out: &mut SchedulerOutput, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            let id = self.running[i];
            let n = self.seqs[&id].step_tokens(*budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let mut scheduled_self = true;
            while !self.blocks.can_append_slots(id, n) {
                let victim = self.victim_index().expect("the running set holds `id`");
                let victim_id = self.running[victim];
                // A victim already planned this step gives its tokens back.
                if let Some(pos) = out.scheduled.iter().position(|s| s.id == victim_id) {
                    *budget += out.scheduled.remove(pos).num_new_tokens;
                }
                self.preempt(victim, PreemptReason::KvCacheFull, out);
                if victim_id == id {
                    scheduled_self = false;
                    break;
                }
                if victim < i {
                    i -= 1;
                }
            }
            if scheduled_self {
                self.blocks
                    .append_slots(id, n)
                    .expect("checked by can_append_slots");
                out.scheduled.push(ScheduledSeq {
                    id,
                    num_new_tokens: n,
                    transition: None,
                });
                *budget -= n;
                i += 1;
            }
        }
    }

    fn schedule_waiting(&mut self, out: &mut SchedulerOutput, budget: &mut usize, now: f64) {
        while *budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some((_, &id)) = self.waiting.first_key_value() else {
                return;
            };
            let (hits, n) = self.admission(id, *budget);
            if !self.blocks.can_allocate_with_prefix(&hits, n) {
                return;
            }
            self.waiting.pop_first();
            self.blocks
                .allocate_with_prefix(id, &hits, n)
                .expect("checked by can_allocate_with_prefix");
            let cached = hits.len() * self.blocks.block_size();
            let seq = self.seqs.get_mut(&id).expect("waiting request is live");
            if self.config.enable_prefix_caching {
                // A request that could use nothing (it owes every prompt logprob) looked up
                // nothing.
                let queried = if seq.max_cache_hit_tokens() == 0 {
                    0
                } else {
                    seq.num_prompt_tokens()
                };
                seq.start_from_cache(queried, cached);
            }
            let kind = match seq.status {
                RequestStatus::Preempted => ScheduleKind::Resume,
                _ => ScheduleKind::First,
            };
            seq.status = RequestStatus::Running;
            seq.times.first_scheduled.get_or_insert(now);
            self.running.push(id);
            out.scheduled.push(ScheduledSeq {
                id,
                num_new_tokens: n,
                transition: Some(kind),
            });
            *budget -= n;
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
