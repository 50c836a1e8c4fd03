//! The engine side: [`CoreObserver`] turns the engine's journey events into `llm_core` spans
//! and, with step tracing on, sampled steps into `scheduler_step` spans.
//!
//! `llm_core` is made at QUEUED from the request's own carrier (never from shared state), and
//! only when the API layer sampled the request in (`x-wayfinder-journey-sampled: 1`); its
//! parent is the `llm_request` span the carrier names. It ends at FINISHED, which the engine
//! sends exactly once on every path. Per-request state lives only between those two events.

use std::collections::HashMap;

use opentelemetry::trace::{Link, Span as _, SpanContext, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use wayfinder_core::{
    JourneyEvent, JourneyEventKind, JourneyObserver, ScheduleKind, SeqId, StepDetail, StepReport,
};

use crate::carrier;
use crate::config::StepTracingConfig;
use crate::names::{SPAN_CORE, SPAN_STEP, STEP_REQUEST_SNAPSHOT, attr};
use crate::provider::{Telemetry, WallClock};

/// The OpenTelemetry journey observer; give it to the engine.
#[derive(Debug)]
pub struct CoreObserver {
    scheduler: SdkTracer,
    step_tracer: SdkTracer,
    clock: WallClock,
    step: StepTracingConfig,
    rng: SmallRng,
    /// The live `llm_core` spans.
    spans: HashMap<SeqId, Span>,
    /// Spans that ended since the current step began, so that its step span can link them.
    ended_in_step: Vec<(SeqId, SpanContext)>,
}

impl CoreObserver {
    /// An observer exporting through `telemetry`'s provider.
    pub fn new(telemetry: &Telemetry) -> Self {
        Self {
            scheduler: telemetry.scheduler_tracer().clone(),
            step_tracer: telemetry.step_tracer().clone(),
            clock: telemetry.clock(),
            step: telemetry.config().step,
            rng: SmallRng::from_os_rng(),
            spans: HashMap::new(),
            ended_in_step: Vec::new(),
        }
    }

    fn start(&mut self, event: &JourneyEvent<'_>) {
        if !carrier::is_sampled(event.carrier) {
            return;
        }
        let parent = carrier::extract_carrier(event.carrier);
        tracing::debug!(
            request_id = event.request_id,
            parent_context = parent.is_some(),
            "journey tracing: context extracted"
        );
        let cx = parent.map_or_else(Context::new, |p| Context::new().with_remote_span_context(p));
        let request_id = carrier::request_id(event.carrier).unwrap_or(event.request_id);
        let span = self
            .scheduler
            .span_builder(SPAN_CORE)
            .with_kind(SpanKind::Internal)
            .with_start_time(self.clock.wall(event.fields.ts_monotonic))
            .with_attributes([
                KeyValue::new(attr::REQUEST_ID, request_id.to_owned()),
                KeyValue::new(
                    attr::CHOICE_INDEX,
                    i64::from(carrier::choice_index(event.carrier)),
                ),
            ])
            .start_with_context(&self.scheduler, &cx);
        tracing::debug!(
            request_id = event.request_id,
            trace_id = %span.span_context().trace_id(),
            "journey tracing: llm_core span made"
        );
        self.spans.insert(event.seq_id, span);
    }
}

/// The span event's name for `kind`.
fn event_name(kind: JourneyEventKind) -> &'static str {
    match kind {
        JourneyEventKind::Queued => "journey.QUEUED",
        JourneyEventKind::Scheduled(_) => "journey.SCHEDULED",
        JourneyEventKind::FirstToken => "journey.FIRST_TOKEN",
        JourneyEventKind::Preempted(_) => "journey.PREEMPTED",
        JourneyEventKind::Finished(_) => "journey.FINISHED",
    }
}

fn event_attributes(event: &JourneyEvent<'_>) -> Vec<KeyValue> {
    let f = &event.fields;
    let mut attrs = Vec::with_capacity(12);
    attrs.extend([
        KeyValue::new(attr::EVENT_TYPE, event.kind.as_str()),
        KeyValue::new(attr::TS_MONOTONIC, f.ts_monotonic),
        KeyValue::new(attr::TS_MONOTONIC_NS, f.ts_monotonic_ns()),
        KeyValue::new(attr::SCHEDULER_STEP, f.scheduler_step as i64),
        KeyValue::new(attr::PHASE, f.phase.as_str()),
        KeyValue::new(attr::PREFILL_DONE_TOKENS, f.prefill_done_tokens as i64),
        KeyValue::new(attr::PREFILL_TOTAL_TOKENS, f.prefill_total_tokens as i64),
        KeyValue::new(attr::DECODE_DONE_TOKENS, f.decode_done_tokens as i64),
        KeyValue::new(attr::DECODE_MAX_TOKENS, f.decode_max_tokens as i64),
        KeyValue::new(attr::NUM_PREEMPTIONS, i64::from(f.num_preemptions)),
    ]);
    match event.kind {
        JourneyEventKind::Scheduled(kind) => {
            attrs.push(KeyValue::new(attr::SCHEDULE_KIND, kind.as_str()));
            if kind == ScheduleKind::First {
                attrs.push(KeyValue::new(
                    attr::PREFIX_CACHE_HIT_TOKENS,
                    f.prefix_cache_hit_tokens as i64,
                ));
            }
        }
        JourneyEventKind::Preempted(reason) => {
            attrs.push(KeyValue::new(attr::PREEMPT_REASON, reason.as_str()));
        }
        JourneyEventKind::Finished(status) => {
            attrs.push(KeyValue::new(attr::FINISH_STATUS, status.as_str()));
        }
        JourneyEventKind::Queued | JourneyEventKind::FirstToken => {}
    }
    attrs
}

impl JourneyObserver for CoreObserver {
    fn on_event(&mut self, event: &JourneyEvent<'_>) {
        if event.kind == JourneyEventKind::Queued {
            self.start(event);
        }
        let Some(span) = self.spans.get_mut(&event.seq_id) else {
            return;
        };
        let at = self.clock.wall(event.fields.ts_monotonic);
        span.add_event_with_timestamp(event_name(event.kind), at, event_attributes(event));
        if let JourneyEventKind::Finished(_) = event.kind
            && let Some(mut span) = self.spans.remove(&event.seq_id)
        {
            span.end_with_timestamp(at);
            if self.step.enabled {
                self.ended_in_step
                    .push((event.seq_id, span.span_context().clone()));
            }
        }
    }

    fn step_detail(&mut self, _step: u64) -> StepDetail {
        if !self.step.enabled {
            return StepDetail::Skip;
        }
        self.ended_in_step.clear();
        if !draw(&mut self.rng, self.step.sample_rate) {
            return StepDetail::Skip;
        }
        if draw(&mut self.rng, self.step.rich_subsample_rate) {
            StepDetail::Rich
        } else {
            StepDetail::Summary
        }
    }

    fn on_step(&mut self, r: &StepReport<'_>) {
        let links: Vec<Link> = r
            .requests
            .iter()
            .filter_map(|q| {
                self.spans
                    .get(&q.seq_id)
                    .map(|s| s.span_context().clone())
                    .or_else(|| {
                        self.ended_in_step
                            .iter()
                            .find(|(id, _)| *id == q.seq_id)
                            .map(|(_, sc)| sc.clone())
                    })
            })
            .map(Link::with_context)
            .collect();
        let usage = if r.kv_blocks_total == 0 {
            0.0
        } else {
            (r.kv_blocks_total - r.kv_blocks_free) as f64 / r.kv_blocks_total as f64
        };
        let duration_us = ((r.end - r.start) * 1e6).round() as i64;
        let mut span = self
            .step_tracer
            .span_builder(SPAN_STEP)
            .with_kind(SpanKind::Internal)
            .with_start_time(self.clock.wall(r.start))
            .with_links(links)
            .with_attributes([
                KeyValue::new(attr::STEP_ID, r.step as i64),
                KeyValue::new(attr::STEP_DURATION_US, duration_us),
                KeyValue::new(attr::QUEUE_RUNNING_DEPTH, r.running_depth as i64),
                KeyValue::new(attr::QUEUE_WAITING_DEPTH, r.waiting_depth as i64),
                KeyValue::new(attr::BATCH_NUM_PREFILL_REQS, r.num_prefill_reqs as i64),
                KeyValue::new(attr::BATCH_NUM_DECODE_REQS, r.num_decode_reqs as i64),
                KeyValue::new(
                    attr::BATCH_SCHEDULED_TOKENS,
                    (r.prefill_tokens + r.decode_tokens) as i64,
                ),
                KeyValue::new(attr::BATCH_PREFILL_TOKENS, r.prefill_tokens as i64),
                KeyValue::new(attr::BATCH_DECODE_TOKENS, r.decode_tokens as i64),
                KeyValue::new(attr::BATCH_NUM_FINISHED, r.num_finished as i64),
                KeyValue::new(attr::BATCH_NUM_PREEMPTED, r.num_preempted as i64),
                KeyValue::new(attr::KV_BLOCKS_TOTAL, r.kv_blocks_total as i64),
                KeyValue::new(attr::KV_BLOCKS_FREE, r.kv_blocks_free as i64),
                KeyValue::new(attr::KV_USAGE_RATIO, usage),
            ])
            .start_with_context(&self.step_tracer, &Context::new());
        if r.detail == StepDetail::Rich {
            for q in r.requests {
                span.add_event_with_timestamp(
                    STEP_REQUEST_SNAPSHOT,
                    self.clock.wall(r.start),
                    vec![
                        KeyValue::new(attr::SNAP_REQUEST_ID, q.request_id.clone()),
                        KeyValue::new(attr::SNAP_PHASE, q.phase.as_str()),
                        KeyValue::new(attr::SNAP_NUM_PROMPT_TOKENS, q.num_prompt_tokens as i64),
                        KeyValue::new(attr::SNAP_NUM_COMPUTED_TOKENS, q.num_computed_tokens as i64),
                        KeyValue::new(attr::SNAP_NUM_OUTPUT_TOKENS, q.num_output_tokens as i64),
                        KeyValue::new(attr::SNAP_NUM_PREEMPTIONS, i64::from(q.num_preemptions)),
                        KeyValue::new(attr::SNAP_SCHEDULED_TOKENS, q.scheduled_tokens as i64),
                        KeyValue::new(attr::SNAP_KV_BLOCKS, q.kv_blocks as i64),
                    ],
                );
            }
        }
        span.end_with_timestamp(self.clock.wall(r.end));
        self.ended_in_step.clear();
    }
}

/// A Bernoulli draw at `rate`.
fn draw(rng: &mut SmallRng, rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rng.random::<f64>() < rate)
}
