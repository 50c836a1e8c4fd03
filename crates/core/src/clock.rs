//! The engine's monotonic clock.
//!
//! Timestamps are `f64` seconds of the operating system's monotonic clock (`CLOCK_MONOTONIC` on
//! Unix). Unlike [`std::time::Instant`], the value is meaningful across processes on one host, so
//! an API process and an engine-core process can compare their timestamps and send them over a
//! socket. It never goes backwards and is unaffected by wall-clock changes.

/// Seconds on the host's monotonic clock.
#[cfg(unix)]
pub fn monotonic_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and CLOCK_MONOTONIC exists on every Unix we
    // build for; clock_gettime writes only into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Seconds since this process first read the clock (non-Unix fallback: not comparable across
/// processes).
#[cfg(not(unix))]
pub fn monotonic_now() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_goes_backwards() {
        let mut last = monotonic_now();
        for _ in 0..1000 {
            let now = monotonic_now();
            assert!(now >= last);
            last = now;
        }
        assert!(last > 0.0);
    }
}
