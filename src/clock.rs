//! The loop clock: `CLOCK_MONOTONIC` in seconds as `f64`, the same clock and epoch as Python's
//! `time.monotonic()`, so `loop.time()` can be compared with it directly; and `StepClock`,
//! the same clock in nanoseconds read cheaply between callbacks, for the instruments.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::sys::clock::{cycle_counter, cycle_counter_usable};

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

/// How long the cycle counter is watched against the monotonic clock before its rate is
/// trusted, and how often that rate is measured again (each time over everything since the
/// first anchor, so the measure only gets finer).
const CALIBRATION_NS: u64 = 2_000_000;
/// An anchor whose two counter reads (around the monotonic read) are further apart than this
/// was interrupted, and is not used to measure the rate.
const ANCHOR_SLACK_TICKS: u64 = 20_000;
/// Once the rate is known, an anchor younger than this is kept: a busy loop iterating every
/// few microseconds (an echo server) would otherwise pay a `clock_gettime` and two counter
/// reads per iteration. The counter's reading is off the monotonic clock by at most the
/// rate's error (and any NTP slew, at most 500 ppm) times this: a few tens of ns.
const REANCHOR_NS: u64 = 250_000;

/// `monotonic_ns()` for the timestamps the instruments take around each callback, at a
/// fraction of the cost where the CPU's cycle counter is usable: `anchor` reads the monotonic
/// clock (at a loop iteration's start, where the first callback's start is read anyway, when
/// the last anchor is `REANCHOR_NS` old) and the counter together; `now` is that reading plus
/// the counter's advance since, at the rate measured between anchors at least
/// `CALIBRATION_NS` apart. Between anchors it can be off by
/// the rate's error (parts per million) times the time since the anchor; until the rate is
/// known, and where the counter is not usable, `now` is `monotonic_ns()`.
///
/// Loop thread (atomics only so that the instruments stay `Sync`; relaxed, one writer).
#[derive(Default)]
pub struct StepClock {
    anchor_ns: AtomicU64,
    anchor_ticks: AtomicU64,
    /// The anchor the rate is measured from (0: none yet).
    since_ns: AtomicU64,
    since_ticks: AtomicU64,
    /// When the rate was last measured.
    measured_ns: AtomicU64,
    /// Nanoseconds per tick, 32.32 fixed point (0: not known).
    scale: AtomicU64,
    /// `REANCHOR_NS` in ticks, at that rate.
    reanchor_ticks: AtomicU64,
}

impl StepClock {
    /// The monotonic clock now: read, and the counter re-anchored to it, unless the anchor
    /// is younger than `REANCHOR_NS` (then as `now`).
    #[inline]
    pub fn anchor(&self) -> u64 {
        let scale = self.scale.load(Relaxed);
        if scale != 0 {
            let ticks = cycle_counter().wrapping_sub(self.anchor_ticks.load(Relaxed));
            if ticks < self.reanchor_ticks.load(Relaxed) {
                return self.anchor_ns.load(Relaxed) + Self::advance(ticks, scale);
            }
        }
        self.reanchor()
    }

    #[inline(never)]
    fn reanchor(&self) -> u64 {
        if !cycle_counter_usable() {
            return monotonic_ns();
        }
        let before = cycle_counter();
        let ns = monotonic_ns();
        let after = cycle_counter();
        let ticks = before + after.wrapping_sub(before) / 2;
        self.anchor_ns.store(ns, Relaxed);
        self.anchor_ticks.store(ticks, Relaxed);
        if after.wrapping_sub(before) > ANCHOR_SLACK_TICKS {
            return ns;
        }
        let since = self.since_ns.load(Relaxed);
        if since == 0 {
            self.since_ns.store(ns, Relaxed);
            self.since_ticks.store(ticks, Relaxed);
            self.measured_ns.store(ns, Relaxed);
        } else if ns.saturating_sub(self.measured_ns.load(Relaxed)) >= CALIBRATION_NS {
            let elapsed = ticks.wrapping_sub(self.since_ticks.load(Relaxed));
            if elapsed > 0 {
                let scale = u64::try_from((u128::from(ns - since) << 32) / u128::from(elapsed))
                    .unwrap_or(0);
                if scale != 0 {
                    let reanchor = (u128::from(REANCHOR_NS) << 32) / u128::from(scale);
                    self.reanchor_ticks
                        .store(u64::try_from(reanchor).unwrap_or(0), Relaxed);
                }
                self.scale.store(scale, Relaxed);
            }
            self.measured_ns.store(ns, Relaxed);
        }
        ns
    }

    /// The monotonic clock now, in nanoseconds (see the type).
    #[inline]
    pub fn now(&self) -> u64 {
        let scale = self.scale.load(Relaxed);
        if scale == 0 {
            return monotonic_ns();
        }
        let ticks = cycle_counter().wrapping_sub(self.anchor_ticks.load(Relaxed));
        self.anchor_ns.load(Relaxed) + Self::advance(ticks, scale)
    }

    /// Nanoseconds in `ticks` at `scale`.
    #[inline]
    fn advance(ticks: u64, scale: u64) -> u64 {
        ((u128::from(ticks) * u128::from(scale)) >> 32) as u64
    }
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

    /// A step clock whose rate was measured over `ms` milliseconds, just anchored.
    fn calibrated(ms: u64) -> StepClock {
        let clock = StepClock::default();
        clock.anchor();
        std::thread::sleep(std::time::Duration::from_millis(ms));
        clock.anchor();
        clock
    }

    /// `read()` agrees with the monotonic clock read around it, within 20 us.
    fn assert_near_monotonic(read: impl FnOnce() -> u64) -> u64 {
        let (before, value, after) = (monotonic_ns(), read(), monotonic_ns());
        assert!(value + 20_000 >= before && value <= after + 20_000);
        value
    }

    #[test]
    fn the_step_clock_follows_the_monotonic_clock() {
        let clock = calibrated(25);
        std::thread::sleep(std::time::Duration::from_millis(2));
        // Two milliseconds from the anchor, at a rate measured over 25.
        let stepped = assert_near_monotonic(|| clock.now());
        assert!(clock.now() >= stepped);
    }

    #[test]
    fn a_young_anchor_is_kept_and_an_old_one_renewed() {
        if !cycle_counter_usable() {
            return; // every anchor is a plain clock read: nothing is kept
        }
        let clock = calibrated(5);
        let (anchored_at, first_ticks) = (monotonic_ns(), clock.anchor_ticks.load(Relaxed));
        assert_near_monotonic(|| clock.anchor());
        if monotonic_ns() - anchored_at < REANCHOR_NS / 2 {
            // (unless this thread was descheduled for that long)
            assert_eq!(clock.anchor_ticks.load(Relaxed), first_ticks);
        }
        std::thread::sleep(std::time::Duration::from_nanos(2 * REANCHOR_NS));
        assert_near_monotonic(|| clock.anchor());
        assert_ne!(clock.anchor_ticks.load(Relaxed), first_ticks);
    }

    #[test]
    fn monotonic_never_goes_back() {
        let a = monotonic();
        let b = monotonic();
        assert!(b >= a);
        assert!(a > 0.0);
    }
}
