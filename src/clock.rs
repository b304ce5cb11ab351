//! The loop clock: `CLOCK_MONOTONIC` in seconds as `f64`, the same clock and epoch as Python's
//! `time.monotonic()`, so `loop.time()` can be compared with it directly.

/// Resolution reported by `time.get_clock_info('monotonic')` on Linux.
pub const CLOCK_RESOLUTION: f64 = 1e-9;

#[inline]
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on the
    // platforms we build for, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(a > 0.0);
    }
}
