//! `clock_gettime(CLOCK_MONOTONIC)`: the clock `time.monotonic()` reads (POSIX; the loop's
//! seconds and nanoseconds are made from it in `clock.rs`), and the CPU's cycle counter where
//! it is a usable clock. Any thread, no GIL.

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

/// Whether the CPU's cycle counter is a usable clock: x86-64, with the kernel keeping time
/// with it (its clocksource is `tsc`, which Linux picks only for a counter that runs at a
/// constant rate, does not stop in idle states and agrees across CPUs). Read once.
pub fn cycle_counter_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string(
                "/sys/devices/system/clocksource/clocksource0/current_clocksource",
            )
            .is_ok_and(|source| source.trim() == "tsc")
    })
}

/// The CPU's cycle counter (0 where there is none to read; see `cycle_counter_usable`).
/// Not ordered with the instructions around it, which a timestamp taken between two
/// callbacks does not need.
#[inline]
pub fn cycle_counter() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC exists on every x86-64 CPU and only reads the counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}
