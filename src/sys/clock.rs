//! `clock_gettime(CLOCK_MONOTONIC)`: the clock `time.monotonic()` reads (POSIX; the loop's
//! seconds and nanoseconds are made from it in `clock.rs`). Any thread, no GIL.

/// The monotonic clock now.
#[inline]
pub fn monotonic_timespec() -> libc::timespec {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always supported on the
    // platforms we build for, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts
}
