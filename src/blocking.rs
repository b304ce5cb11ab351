//! The blocking detector's watchdog: a thread that notices, while the loop is still stuck in
//! one callback, that the callback has run longer than the threshold.
//!
//! The loop thread bumps a sequence number before and after each callback (odd while one
//! runs) and stores the handle's address: two plain stores, no clock, no lock, no GIL
//! (`Watch::begin` / `Watch::end`). The watchdog thread wakes every eighth of the threshold
//! and reads those atomics without the GIL; a callback it sees running on consecutive ticks
//! is timed from the tick that first saw it (so the time it reports is short by less than a
//! tick, and a callback shorter than the threshold is never reported). Once one is over the
//! threshold it takes the GIL and calls `ferroloop._instrument.report_blocked`, which captures
//! the loop thread's Python stack at that moment (a callback running Python code gives up the
//! GIL at the interpreter's switch interval; one in `time.sleep` has released it). Each
//! callback is reported once by the watchdog, and once more by the loop when it returns.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::clock::monotonic_ns;
use crate::event_loop::LoopCore;
use crate::support;

#[derive(Default)]
pub struct Watch {
    pub threshold_ns: AtomicU64,
    /// Bumped before and after each callback: odd while one runs.
    seq: AtomicU64,
    /// The `seq` of the callback the watchdog reported (0: none yet).
    reported_seq: AtomicU64,
    /// When the watchdog first saw the reported callback running.
    reported_since_ns: AtomicU64,
    /// The running handle, borrowed from the loop's ready queue while `seq` is odd.
    handle: AtomicPtr<ffi::PyObject>,
    stop: AtomicBool,
}

/// The watchdog's own memory of what it saw on its last tick.
#[derive(Default)]
struct Sighting {
    seq: u64,
    since_ns: u64,
}

impl Watch {
    pub fn new(threshold_ns: u64) -> Arc<Watch> {
        let watch = Watch::default();
        watch.threshold_ns.store(threshold_ns, Relaxed);
        Arc::new(watch)
    }

    #[inline]
    pub fn begin(&self, handle: *mut ffi::PyObject) {
        self.handle.store(handle, Relaxed);
        self.seq.store(self.seq.load(Relaxed) | 1, Relaxed);
    }

    /// The callback returned; if the watchdog reported it, how long it ran (from the
    /// watchdog's first sighting to now).
    #[inline]
    pub fn end(&self) -> Option<f64> {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq + 1, Relaxed);
        (self.reported_seq.load(Relaxed) == seq).then(|| {
            let since = self.reported_since_ns.load(Relaxed);
            monotonic_ns().saturating_sub(since) as f64 * 1e-9
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Relaxed);
    }

    fn period(&self) -> Duration {
        let tick = self.threshold_ns.load(Relaxed) / 8;
        Duration::from_nanos(tick.clamp(1_000_000, 100_000_000))
    }

    /// One tick: the callback that has now been seen running for at least the threshold and
    /// is not reported yet, as (its seq, when it was first seen).
    fn tick(&self, seen: &mut Sighting, now_ns: u64) -> Option<(u64, u64)> {
        let seq = self.seq.load(Relaxed);
        if seq & 1 == 0 {
            return None;
        }
        if seq != seen.seq {
            *seen = Sighting {
                seq,
                since_ns: now_ns,
            };
            return None;
        }
        let overdue = self.reported_seq.load(Relaxed) != seq
            && now_ns - seen.since_ns >= self.threshold_ns.load(Relaxed);
        overdue.then_some((seq, seen.since_ns))
    }
}

/// Start the watchdog for the loop `loop_ref` (a weak reference, so the thread never keeps
/// the loop alive). The thread ends once `watch.stop()` is called, the loop has dropped its
/// `Watch`, the loop is gone or the interpreter is finalizing.
pub fn spawn(watch: Arc<Watch>, loop_ref: Py<PyAny>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("ferroloop-watchdog".into())
        .spawn(move || {
            let mut loop_ref = Some(loop_ref);
            let mut seen = Sighting::default();
            // A loop dropped without being closed leaves this thread the only owner.
            while !watch.stop.load(Relaxed) && Arc::strong_count(&watch) > 1 {
                thread::sleep(watch.period());
                let Some((seq, since)) = watch.tick(&mut seen, monotonic_ns()) else {
                    continue;
                };
                let alive =
                    Python::try_attach(|py| report(py, &watch, loop_ref.as_ref(), seq, since));
                if alive != Some(true) {
                    break;
                }
            }
            match Python::try_attach(|_py| drop(loop_ref.take())) {
                Some(()) => {}
                // Finalizing: the reference cannot be released any more.
                None => std::mem::forget(loop_ref),
            }
        })
        .map(drop)
}

/// With the GIL: report callback `seq` if it is still running. False once the loop is gone.
fn report(
    py: Python<'_>,
    watch: &Watch,
    loop_ref: Option<&Py<PyAny>>,
    seq: u64,
    since: u64,
) -> bool {
    let Some(event_loop) = loop_ref.and_then(|weak| weak.bind(py).call0().ok()) else {
        return false;
    };
    let Ok(core) = event_loop.cast::<LoopCore>() else {
        return false;
    };
    // Re-checked with the GIL: the callback may have returned while we waited for it.
    if watch.seq.load(Relaxed) != seq || watch.stop.load(Relaxed) {
        return true;
    }
    watch.reported_since_ns.store(since, Relaxed);
    watch.reported_seq.store(seq, Relaxed);
    core.get().instruments().stats.blocked_episodes.add(1);
    let elapsed = monotonic_ns().saturating_sub(since) as f64 * 1e-9;
    // SAFETY: callback `seq` is still running (checked just above, with the GIL held since),
    // so the loop thread has not released its handle: it does that only after `end()`,
    // holding the GIL. The strong reference taken here keeps it alive through the report.
    let handle = unsafe { Bound::from_borrowed_ptr(py, watch.handle.load(Relaxed)) };
    if let Err(err) = support::report_blocked(&event_loop, &handle, elapsed) {
        err.write_unraisable(py, None);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_is_overdue_once_seen_running_for_the_threshold() {
        let w = Watch::new(100);
        let mut seen = Sighting::default();
        assert_eq!(w.tick(&mut seen, 1_000), None); // idle
        w.begin(std::ptr::null_mut());
        assert_eq!(w.tick(&mut seen, 1_010), None); // first sighting
        assert_eq!(w.tick(&mut seen, 1_050), None);
        assert_eq!(w.tick(&mut seen, 1_110), Some((1, 1_010)));
        w.reported_since_ns.store(1_010, Relaxed);
        w.reported_seq.store(1, Relaxed);
        assert_eq!(w.tick(&mut seen, 1_200), None); // reported once
        assert!(w.end().is_some());
        w.begin(std::ptr::null_mut());
        assert_eq!(w.tick(&mut seen, 1_300), None); // a new callback: a new sighting
        assert!(w.end().is_none());
    }
}
