//! The journey history (contract "Journey history and viewer"): the last `--journey-history N`
//! requests' journeys in memory — the API side's milestones and, for each choice, the engine's
//! journey marks (queued, each scheduling, each preemption with its reason, first token,
//! finish) — plus the requests in flight, whether or not spans are exported, in both engine
//! modes. Memory is bounded by N records of a few dozen events each.
//!
//! [`crate::journey::Journey`] registers a request at arrival ([`History::arrived`]), notes its
//! hand-off and first output, and files its record at its end ([`History::ended`]).
//! `GET /journeys/api` serves [`History::snapshot`] as JSON; `GET /journeys` is the page that
//! shows it (`journeys.html`, embedded in the binary).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use wayfinder_core::{JourneyEventKind, JourneyMark};

/// One event on a request's timeline, `t` seconds after its arrival.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// `arrived`, `handed_off`, `first_output`, `departed`, `aborted`, or an engine event
    /// (`QUEUED`, `SCHEDULED`, `PREEMPTED`, `FIRST_TOKEN`, `FINISHED`).
    pub(crate) name: &'static str,
    pub(crate) t: f64,
    /// The schedule kind, preemption reason, finish status or abort reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<String>,
    /// The choice an engine event belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) choice: Option<usize>,
}

/// One request's journey as the history keeps and serves it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Record {
    pub(crate) id: String,
    pub(crate) operation: &'static str,
    /// `in_flight`, `departed`, `failed` or `disconnected`.
    pub(crate) status: &'static str,
    /// Unix seconds of the arrival.
    pub(crate) arrival_unix: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
    pub(crate) finish_reasons: Vec<&'static str>,
    pub(crate) queue_s: Option<f64>,
    pub(crate) ttft_s: Option<f64>,
    pub(crate) e2e_s: Option<f64>,
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    /// No prefix cache yet: 0.
    pub(crate) cached_tokens: usize,
    pub(crate) preemptions: u64,
    pub(crate) events: Vec<Event>,
}

impl Record {
    /// A request that just arrived.
    pub(crate) fn arrived(id: &str, operation: &'static str, trace_id: Option<String>) -> Self {
        let arrival_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Self {
            id: id.to_owned(),
            operation,
            status: "in_flight",
            arrival_unix,
            trace_id,
            error: None,
            finish_reasons: Vec::new(),
            queue_s: None,
            ttft_s: None,
            e2e_s: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            cached_tokens: 0,
            preemptions: 0,
            events: vec![Event {
                name: "arrived",
                t: 0.0,
                detail: None,
                choice: None,
            }],
        }
    }

    /// Adds an API-side event at `t` seconds.
    pub(crate) fn event(&mut self, name: &'static str, t: f64, detail: Option<String>) {
        self.events.push(Event {
            name,
            t,
            detail,
            choice: None,
        });
    }

    /// Adds choice `choice`'s engine marks, `arrival` being the request's (monotonic seconds).
    pub(crate) fn engine_marks(&mut self, choice: usize, marks: &[JourneyMark], arrival: f64) {
        for m in marks {
            let detail = match m.kind {
                JourneyEventKind::Scheduled(kind) => Some(kind.as_str().to_owned()),
                JourneyEventKind::Preempted(reason) => Some(reason.as_str().to_owned()),
                JourneyEventKind::Finished(status) => Some(status.as_str().to_owned()),
                JourneyEventKind::Queued | JourneyEventKind::FirstToken => None,
            };
            self.events.push(Event {
                name: m.kind.as_str(),
                t: m.ts - arrival,
                detail,
                choice: Some(choice),
            });
        }
    }
}

/// What `GET /journeys/api` may ask for.
#[derive(Debug, Default, Clone)]
pub(crate) struct Query {
    /// At most this many finished journeys (newest first); default 100.
    pub(crate) limit: Option<usize>,
    /// `in_flight`, `departed`, `failed`, `disconnected`, or `error` (failed or disconnected).
    pub(crate) status: Option<String>,
    /// Only journeys at least this many seconds end to end.
    pub(crate) min_e2e: Option<f64>,
}

impl Query {
    /// From a URL query string (`limit=20&status=error&min_e2e=1.5`); unknown keys and values
    /// that do not parse are ignored.
    pub(crate) fn parse(query: &str) -> Self {
        let mut q = Self::default();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "limit" => q.limit = value.parse().ok(),
                "status" => q.status = Some(value.to_owned()),
                "min_e2e" => q.min_e2e = value.parse().ok().filter(|v: &f64| v.is_finite()),
                _ => {}
            }
        }
        q
    }
}

/// The history; see the module docs. Capacity 0 keeps nothing.
#[derive(Debug)]
pub(crate) struct History {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<String, Record>,
    done: VecDeque<Record>,
}

impl History {
    /// A history of the last `capacity` journeys.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Whether journeys are kept at all.
    pub(crate) fn is_on(&self) -> bool {
        self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request arrived: listed as in flight until it ends.
    pub(crate) fn arrived(&self, record: Record) {
        if self.is_on() {
            self.lock().live.insert(record.id.clone(), record);
        }
    }

    /// Updates an in-flight request's record.
    pub(crate) fn update(&self, id: &str, f: impl FnOnce(&mut Record)) {
        if self.is_on()
            && let Some(r) = self.lock().live.get_mut(id)
        {
            f(r);
        }
    }

    /// A request ended with `record`: it leaves the in-flight list for the recent ones; the
    /// oldest one beyond the capacity is forgotten.
    pub(crate) fn ended(&self, record: Record) {
        if !self.is_on() {
            return;
        }
        let mut inner = self.lock();
        inner.live.remove(&record.id);
        inner.done.push_back(record);
        while inner.done.len() > self.capacity {
            inner.done.pop_front();
        }
    }

    /// In-flight and recent journeys matching `q`, newest first.
    pub(crate) fn snapshot(&self, q: &Query) -> (Vec<Record>, Vec<Record>) {
        let inner = self.lock();
        let wanted = |r: &Record| {
            let status = match q.status.as_deref() {
                None | Some("") => true,
                Some("error") => matches!(r.status, "failed" | "disconnected"),
                Some(s) => r.status == s,
            };
            status && q.min_e2e.is_none_or(|m| r.e2e_s.is_some_and(|e| e >= m))
        };
        let mut live: Vec<Record> = inner.live.values().filter(|r| wanted(r)).cloned().collect();
        live.sort_by(|a, b| b.arrival_unix.total_cmp(&a.arrival_unix));
        let recent = inner
            .done
            .iter()
            .rev()
            .filter(|r| wanted(r))
            .take(q.limit.unwrap_or(100))
            .cloned()
            .collect();
        (live, recent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_n_and_lists_the_live() {
        let h = History::new(3);
        for i in 0..5 {
            let mut r = Record::arrived(&format!("r{i}"), "chat", None);
            h.arrived(r.clone());
            r.status = if i == 4 { "failed" } else { "departed" };
            r.e2e_s = Some(f64::from(i));
            h.ended(r);
        }
        h.arrived(Record::arrived("live", "chat", None));
        let (live, recent) = h.snapshot(&Query::default());
        assert_eq!(live.len(), 1);
        let ids: Vec<_> = recent.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["r4", "r3", "r2"]);
        let errors = h.snapshot(&Query {
            status: Some("error".into()),
            ..Query::default()
        });
        assert_eq!(errors.1.len(), 1);
        let slow = h.snapshot(&Query {
            min_e2e: Some(3.0),
            ..Query::default()
        });
        assert_eq!(slow.1.len(), 2);
        assert!(!History::new(0).is_on());
        let q = Query::parse("limit=5&status=error&min_e2e=nan&x=1");
        assert_eq!(
            (q.limit, q.status.as_deref(), q.min_e2e),
            (Some(5), Some("error"), None)
        );
    }
}
