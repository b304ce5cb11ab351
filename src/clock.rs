//! The loop clock: `CLOCK_MONOTONIC` in seconds as `f64`, the same clock and epoch as Python's
//! `time.monotonic()`, so `loop.time()` can be compared with it directly.

/// Resolution reported by `time.get_clock_info('monotonic')` on Linux.
pub const CLOCK_RESOLUTION: f64 = 1e-9;

#[inline]
pub fn monotonic() -> f64 {
    let ts = crate::sys::clock::monotonic_timespec();
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The same clock in integer nanoseconds, for instrumentation timestamps.
#[inline]
pub fn monotonic_ns() -> u64 {
    let ts = crate::sys::clock::monotonic_timespec();
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds on the loop clock to nanoseconds (negative and NaN become 0).
#[inline]
pub fn to_ns(seconds: f64) -> u64 {
    (seconds * 1e9) as u64
}

/// The end of the window in which timers count as due at `now`: `now` plus the clock's
/// resolution, or plus one unit in the last place of `now` where that is larger (a machine up
/// for months has `now + 1e-9 == now`, and a timer due at `now` would then never be due and the
/// loop would spin). CPython 3.15's `_run_once` made the same fix.
pub fn due_window_end(now: f64) -> f64 {
    let ulp = f64::from_bits(now.to_bits() + 1) - now;
    now + CLOCK_RESOLUTION.max(ulp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_window_always_ends_after_now() {
        for now in [0.5, 1.0, 3600.0, 1e7, 1e9, 4.5e9] {
            assert!(due_window_end(now) > now, "{now}");
        }
        assert_eq!(due_window_end(1.0), 1.0 + CLOCK_RESOLUTION);
        let late = std::hint::black_box(1e9); // months of uptime: `late + 1e-9 == late`
        assert_eq!(late + CLOCK_RESOLUTION, late);
        assert!(due_window_end(late) > late);
    }

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(a > 0.0);
    }
}
