//! Counting around the SDK's batch processor and the OTLP exporter, so that no span is lost
//! silently: every span ended, exported, or lost to an export error is counted, export errors
//! are logged (rate-limited), and a backlog that can only mean a full queue is logged too.
//!
//! The SDK's [`BatchSpanProcessor`](opentelemetry_sdk::trace::BatchSpanProcessor) owns the
//! bounded queue and never blocks the caller: when the queue is full it drops the span (and
//! logs the exact total at shutdown). Spans dropped there never reach the exporter, so
//! `ended − exported − failed` is the queue's backlog plus its drops.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};

/// How often a repeated export problem is logged at most.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Span counts of one provider.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    ended: AtomicU64,
    exported: AtomicU64,
    failed: AtomicU64,
}

/// A snapshot of a provider's span counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportStats {
    /// Spans ended (handed to the batch processor).
    pub ended: u64,
    /// Spans the collector accepted.
    pub exported: u64,
    /// Spans lost to failed exports (collector down, refused, timed out).
    pub failed: u64,
}

impl ExportStats {
    /// Spans not (yet) accounted for: in the queue or dropped at a full queue. After a flush,
    /// the drops.
    pub fn unaccounted(&self) -> u64 {
        self.ended.saturating_sub(self.exported + self.failed)
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> ExportStats {
        ExportStats {
            ended: self.ended.load(Ordering::Relaxed),
            exported: self.exported.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

/// Logs at most once per [`LOG_INTERVAL`].
#[derive(Debug, Default)]
struct RateLimit {
    last: Mutex<Option<Instant>>,
}

impl RateLimit {
    fn ready(&self) -> bool {
        let Ok(mut last) = self.last.lock() else {
            return false;
        };
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_INTERVAL) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Wraps the exporter: counts what was exported and what failed, and says so in the log.
#[derive(Debug)]
pub(crate) struct CountingExporter<E> {
    inner: E,
    counters: Arc<Counters>,
    endpoint: String,
    log: RateLimit,
}

impl<E> CountingExporter<E> {
    pub(crate) fn new(inner: E, counters: Arc<Counters>, endpoint: String) -> Self {
        Self {
            inner,
            counters,
            endpoint,
            log: RateLimit::default(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.counters.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                let failed = self.counters.failed.fetch_add(n, Ordering::Relaxed) + n;
                if self.log.ready() {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        dropped = n,
                        dropped_total = failed,
                        error = %e,
                        "journey tracing: spans dropped, the OTLP collector is unreachable or \
                         refused them (requests are not affected)"
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Wraps the batch processor: counts ended spans and notices a backlog larger than the queue.
#[derive(Debug)]
pub(crate) struct CountingProcessor<P> {
    inner: P,
    counters: Arc<Counters>,
    /// Queue size plus one export batch: a larger backlog means spans were dropped.
    capacity: u64,
    log: RateLimit,
}

impl<P> CountingProcessor<P> {
    pub(crate) fn new(inner: P, counters: Arc<Counters>, capacity: usize) -> Self {
        Self {
            inner,
            counters,
            capacity: capacity as u64,
            log: RateLimit::default(),
        }
    }
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.counters.ended.fetch_add(1, Ordering::Relaxed);
        self.inner.on_end(span);
        let stats = self.counters.snapshot();
        let backlog = stats.unaccounted();
        if backlog > self.capacity && self.log.ready() {
            tracing::warn!(
                dropped_at_least = backlog - self.capacity,
                queue = self.capacity,
                "journey tracing: the span queue is full, spans are being dropped (the \
                 collector is slow or down; requests are not affected)"
            );
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
