//! Always-on loop statistics: the counters behind `loop.stats()`.
//!
//! Every counter is bumped on state the loop already touches, at the cost of an integer add:
//! no clock is read for them outside the poller's blocking wait and the timers' due check,
//! which read it anyway. Writers always hold the GIL (the loop thread, `call_soon_threadsafe`
//! callers, the blocking watchdog once it has taken the GIL), so a relaxed load and store is
//! enough — no atomic read-modify-write on the hot path; the atomics only make the values
//! readable from any thread.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::gil_cell::GilCell;

use pyo3::prelude::*;
use pyo3::types::PyDict;

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Only called with the GIL held (see the module header), so load + store does not race.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    #[inline]
    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed);
    }

    #[inline]
    pub fn raise_to(&self, value: u64) {
        if value > self.0.load(Relaxed) {
            self.0.store(value, Relaxed);
        }
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// What a scheduled timer shares with its loop: how many cancelled timers still sit in the
/// heap (drives compaction) and how many timers were ever cancelled while scheduled; while the
/// loop is traced, which timers were cancelled and when, for the loop to move into its trace.
#[derive(Default)]
pub struct CancelCounts {
    pub in_heap: AtomicUsize,
    pub total: Counter,
    pub traced: AtomicBool,
    /// (timer handle id, monotonic ns) of each cancellation since the loop last looked.
    pub traced_cancels: GilCell<Vec<(u64, u64)>>,
}

/// Upper bounds (ns) of the loop-lag histogram's buckets; the last bucket is everything above.
pub const LAG_BOUNDS_NS: [u64; 5] = [100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000];
pub const LAG_BUCKET_NAMES: [&str; 6] = ["<100us", "<1ms", "<10ms", "<100ms", "<1s", ">=1s"];

#[derive(Default)]
pub struct LoopStats {
    pub iterations: Counter,
    pub callbacks: Counter,
    pub timers_scheduled: Counter,
    pub timers_fired: Counter,
    pub poll_calls: Counter,
    pub poll_waits: Counter,
    pub poll_wait_ns: Counter,
    pub poll_events: Counter,
    pub ready_high_water: Counter,
    pub tasks_created: Counter,
    pub threadsafe_calls: Counter,
    pub bytes_read: Counter,
    pub bytes_written: Counter,
    pub blocked_episodes: Counter,
    /// Time inside `run_forever`, finished runs only (the current one is added on read).
    pub run_ns: Counter,
    pub run_started_ns: Counter,
    pub lag_max_ns: Counter,
    pub lag_buckets: [Counter; 6],
}

impl LoopStats {
    /// A due timer was taken up `lateness_ns` after its `when`: Node's event-loop delay, the
    /// time anything queued waits behind the callbacks that hold the loop.
    #[inline]
    pub fn record_lag(&self, lateness_ns: u64) {
        let bucket = LAG_BOUNDS_NS
            .iter()
            .position(|&bound| lateness_ns < bound)
            .unwrap_or(LAG_BOUNDS_NS.len());
        self.lag_buckets[bucket].add(1);
        self.lag_max_ns.raise_to(lateness_ns);
    }

    pub fn to_dict<'py>(
        &self,
        py: Python<'py>,
        cancelled: &CancelCounts,
        fds_watched: usize,
        now_ns: u64,
    ) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        let secs = |ns: u64| ns as f64 * 1e-9;
        let started = self.run_started_ns.get();
        let run_ns = self.run_ns.get() + if started > 0 { now_ns - started } else { 0 };
        let poll_ns = self.poll_wait_ns.get();
        d.set_item("iterations", self.iterations.get())?;
        d.set_item("callbacks", self.callbacks.get())?;
        d.set_item("timers_scheduled", self.timers_scheduled.get())?;
        d.set_item("timers_fired", self.timers_fired.get())?;
        d.set_item("timers_cancelled", cancelled.total.get())?;
        d.set_item("run_seconds", secs(run_ns))?;
        d.set_item("poll_wait_seconds", secs(poll_ns))?;
        d.set_item("busy_seconds", secs(run_ns.saturating_sub(poll_ns)))?;
        d.set_item("poll_calls", self.poll_calls.get())?;
        d.set_item("poll_waits", self.poll_waits.get())?;
        d.set_item("poll_events", self.poll_events.get())?;
        d.set_item("ready_high_water", self.ready_high_water.get())?;
        d.set_item("fds_watched", fds_watched)?;
        d.set_item("tasks_created", self.tasks_created.get())?;
        d.set_item("threadsafe_calls", self.threadsafe_calls.get())?;
        d.set_item("bytes_read", self.bytes_read.get())?;
        d.set_item("bytes_written", self.bytes_written.get())?;
        d.set_item("blocked_episodes", self.blocked_episodes.get())?;
        d.set_item("lag_max_seconds", secs(self.lag_max_ns.get()))?;
        let hist = PyDict::new(py);
        for (name, count) in LAG_BUCKET_NAMES.iter().zip(&self.lag_buckets) {
            hist.set_item(*name, count.get())?;
        }
        d.set_item("lag_histogram", hist)?;
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_goes_to_the_bucket_of_its_decade() {
        let s = LoopStats::default();
        for ns in [0, 99_999, 100_000, 5_000_000, 2_000_000_000] {
            s.record_lag(ns);
        }
        let counts: Vec<u64> = s.lag_buckets.iter().map(Counter::get).collect();
        assert_eq!(counts, vec![2, 1, 1, 0, 0, 1]);
        assert_eq!(s.lag_max_ns.get(), 2_000_000_000);
    }
}
