//! A team of threads that stay hot for the length of a forward pass.
//!
//! A decode step of a small model is hundreds of short parallel operations (four matmuls, a
//! norm, rotary, attention and two adds per layer), each tens of microseconds. A work-stealing
//! pool whose idle threads go to sleep between them pays a wake-up per operation, comparable to
//! the operation itself. The team instead keeps its threads spinning on a counter while work
//! keeps coming (as llama.cpp's thread pool does), and parks them after a short idle spell so an
//! idle server costs nothing.
//!
//! [`Team::run`] runs `f(thread_index)` on every member — the caller is member 0 — and returns
//! when all have finished. [`Team::chunks`] splits a mutable slice into chunks handed out to the
//! members in contiguous runs; [`Team::ranges`] hands out index ranges, largest first.

use std::cell::UnsafeCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle member spins before it parks.
const SPIN: Duration = Duration::from_millis(2);

/// The job of the current epoch: a borrowed closure, valid until every member is done.
type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Incremented by each `run`; members run the job of each new epoch once.
    epoch: AtomicU64,
    /// Members (other than the caller) still running the current job.
    remaining: AtomicUsize,
    /// Written by `run` before `epoch` is released; read by members after acquiring it.
    job: UnsafeCell<Option<Job>>,
    stop: AtomicBool,
    parked: Vec<AtomicBool>,
}

// SAFETY: `job` is written only by `run` while no member reads it (all have finished the
// previous epoch, `remaining == 0`), and published through `epoch` with release/acquire.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw job pointer is only dereferenced while `run` keeps it alive.
unsafe impl Send for Shared {}

/// A fixed team of threads; see the module docs.
pub struct Team {
    shared: Arc<Shared>,
    threads: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("size", &self.size()).finish()
    }
}

impl Team {
    /// A team of `size` members (the caller of `run` and `size - 1` threads).
    pub fn new(size: usize) -> Self {
        let size = size.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            remaining: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            stop: AtomicBool::new(false),
            parked: (0..size).map(|_| AtomicBool::new(false)).collect(),
        });
        let handles: Vec<JoinHandle<()>> = (1..size)
            .map(|tid| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("wayfinder-model-{tid}"))
                    .spawn(move || member(&shared, tid))
                    .expect("the model threads start")
            })
            .collect();
        let threads = handles.iter().map(|h| h.thread().clone()).collect();
        Self {
            shared,
            threads,
            handles,
        }
    }

    /// A team with one member per core (or `RAYON_NUM_THREADS`, when set).
    pub fn per_core() -> Self {
        let n = std::env::var("RAYON_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        Self::new(n)
    }

    /// Members, the caller included.
    pub fn size(&self) -> usize {
        self.threads.len() + 1
    }

    /// Runs `f(i)` for every member `i` in `0..size()`, the caller as member 0.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads.is_empty() {
            f(0);
            return;
        }
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only for the duration of this call: we wait below
        // until every member has finished with the job before returning.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f) };
        // SAFETY: no member reads `job` now: the previous epoch ended with `remaining == 0`.
        unsafe { *s.job.get() = Some(job) };
        s.remaining.store(self.threads.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        for (i, t) in self.threads.iter().enumerate() {
            if s.parked[i + 1].load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        f(0);
        while s.remaining.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
    }

    /// Calls `f(i)` for every `i < count`, each on whichever member is free next. Indices are
    /// claimed one at a time, so uneven work (causal attention: later tokens see more keys)
    /// still balances.
    pub fn tasks(&self, count: usize, f: &(dyn Fn(usize) + Sync)) {
        if count <= 1 || self.size() == 1 {
            (0..count).for_each(f);
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                f(i);
            }
        });
    }

    /// Calls `f(range)` for ranges covering `0..count` once, each claimed by whichever member
    /// is free next, largest first: a claim takes an even share of what is left over twice the
    /// members (at least 1). Early claims are long (few atomic claims over a whole product) and
    /// the last ones short, so members finish together: fixed tasks of 4 strips left one member
    /// a whole task behind on the small products of a decode step (`o`, `down`: 36 strips).
    pub fn ranges(&self, count: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let members = self.size();
        if count <= 1 || members == 1 {
            if count > 0 {
                f(0..count);
            }
            return;
        }
        let next = AtomicUsize::new(0);
        self.run(&|_| {
            let mut start = next.load(Ordering::Relaxed);
            while start < count {
                let end = start + ((count - start) / (2 * members)).max(1);
                match next.compare_exchange_weak(start, end, Ordering::Relaxed, Ordering::Relaxed) {
                    Ok(_) => {
                        f(start..end);
                        start = next.load(Ordering::Relaxed);
                    }
                    Err(now) => start = now,
                }
            }
        });
    }

    /// Splits `data` into chunks of `chunk` elements and calls `f(chunk_index, chunk)` for each,
    /// on whichever member is free next.
    pub fn chunks<T: Send>(
        &self,
        data: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T]) + Sync),
    ) {
        let chunk = chunk.max(1);
        let len = data.len();
        let base = SendPtr(data.as_mut_ptr());
        self.tasks(len.div_ceil(chunk), &|i| {
            let lo = i * chunk;
            let hi = (lo + chunk).min(len);
            let ptr = &base;
            // SAFETY: chunk ranges of different `i` are disjoint and inside `data`, which is
            // exclusively borrowed for the whole call; `tasks` hands each `i` to one member.
            let c = unsafe { std::slice::from_raw_parts_mut(ptr.0.add(lo), hi - lo) };
            f(i, c);
        });
    }
}

/// A raw pointer that may cross threads; its users uphold disjointness.
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
// SAFETY: users hand out disjoint ranges only (`Team::chunks`, `Linear::packed`).
unsafe impl<T: Send> Sync for SendPtr<T> {}

impl Drop for Team {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.epoch.fetch_add(1, Ordering::Release);
        for t in &self.threads {
            t.unpark();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn member(s: &Shared, tid: usize) {
    let mut seen = 0;
    loop {
        // Spin for a while after each job (the next one usually follows within microseconds),
        // then park until woken; a timed-out park goes straight back to parking, so an idle
        // team costs nothing.
        let idle = Instant::now();
        let mut spins = 0u32;
        let mut spinning = true;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            if spinning {
                std::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(1024) && idle.elapsed() > SPIN {
                    spinning = false;
                }
                continue;
            }
            // SeqCst pairs with `run`'s bump-then-check: one of the two sees the other.
            s.parked[tid].store(true, Ordering::SeqCst);
            if s.epoch.load(Ordering::SeqCst) == seen {
                std::thread::park_timeout(Duration::from_millis(100));
            }
            s.parked[tid].store(false, Ordering::SeqCst);
        };
        seen = epoch;
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: `run` published the job before this epoch and keeps it alive until
        // `remaining` reaches 0, which happens only after this call returns.
        if let Some(job) = unsafe { *s.job.get() } {
            unsafe { (*job)(tid) };
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_every_job_and_chunks_cover_the_slice() {
        let team = Team::new(3);
        for _ in 0..1000 {
            let hits = AtomicUsize::new(0);
            team.run(&|tid| {
                hits.fetch_add(1 << (8 * tid), Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 1 + (1 << 8) + (1 << 16));
        }
        let mut data = vec![0usize; 1003];
        team.chunks(&mut data, 10, &|i, c| {
            c.iter_mut().for_each(|x| *x += i + 1)
        });
        for (j, x) in data.iter().enumerate() {
            assert_eq!(*x, j / 10 + 1);
        }
        // Ranges cover every index once, in any split.
        for count in [0, 1, 2, 7, 36, 3072] {
            let seen: Vec<AtomicUsize> = (0..count).map(|_| AtomicUsize::new(0)).collect();
            team.ranges(count, &|r| {
                assert!(!r.is_empty());
                r.for_each(|i| {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                });
            });
            assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
        }
        // After a long idle spell the members park and still wake for new work.
        std::thread::sleep(SPIN * 3);
        let ran = AtomicUsize::new(0);
        team.run(&|_| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 3);
    }
}
