//! The handles `call_soon_threadsafe` returns. As CPython 3.14's `events._ThreadSafeHandle`,
//! cancelling one (or asking whether it is cancelled) from another
//! thread waits until its callback is no longer running, so a thread that cancels knows the
//! callback either ran to its end or will never run; from the thread that runs the callback
//! (the callback cancelling its own handle) it does not wait. Such a handle is a `Handle` with
//! a `RunLock`; on 3.14+ its `__class__` is `events._ThreadSafeHandle` (see `Handle.__class__`).
//!
//! The loop thread marks the handle running around the callback (`RunLock::begin`/`end`,
//! GIL held); another thread waits with the GIL released, so the callback, which needs the
//! GIL, can finish. No other check is needed against the loop: with
//! the GIL held, nothing can cancel between the loop's "is it cancelled?" and `begin`.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

thread_local! {
    /// The run lock of the thread-safe handle whose callback this thread runs now (its
    /// address), 0 when none: what tells the running thread from the others.
    static RUNNING_HERE: Cell<usize> = const { Cell::new(0) };
}

/// Whether the handle's callback is running, as one bit of the handle's flags byte (`bit`), so
/// that a handle stays small: a million may be queued. Marking costs two atomic operations
/// and a thread-local write per run and no allocation: `call_soon_threadsafe` is a hot path.
/// Waiting is rare (another thread cancels while the callback runs), so it polls with backoff
/// instead of keeping a condition variable per handle.
pub struct RunLock<'a> {
    flags: &'a AtomicU8,
    bit: u8,
}

impl<'a> RunLock<'a> {
    pub fn new(flags: &'a AtomicU8, bit: u8) -> RunLock<'a> {
        RunLock { flags, bit }
    }

    fn id(&self) -> usize {
        std::ptr::from_ref(self.flags) as usize
    }

    /// Mark the callback running on this thread; `end` takes what this returns.
    #[must_use]
    pub fn begin(&self) -> usize {
        self.flags.fetch_or(self.bit, Ordering::Release);
        RUNNING_HERE.with(|r| r.replace(self.id()))
    }

    pub fn end(&self, previous: usize) {
        RUNNING_HERE.with(|r| r.set(previous));
        self.flags.fetch_and(!self.bit, Ordering::Release);
    }

    /// Return once no other thread runs the callback, waiting with the GIL released.
    pub fn wait_until_idle(&self, py: Python<'_>) {
        let busy = || {
            self.flags.load(Ordering::Acquire) & self.bit != 0
                && RUNNING_HERE.with(Cell::get) != self.id()
        };
        if !busy() {
            return;
        }
        py.detach(|| {
            let mut pause = Duration::from_micros(10);
            while busy() {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(1));
            }
        });
    }
}

pub fn stdlib_type(py: Python<'_>) -> PyResult<Option<&Py<PyType>>> {
    static STDLIB: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
    let cls = STDLIB.get_or_try_init(py, || -> PyResult<_> {
        let events = py.import("asyncio.events")?;
        Ok(events
            .getattr("_ThreadSafeHandle")
            .ok()
            .and_then(|cls| cls.cast_into::<PyType>().ok())
            .map(Bound::unbind))
    })?;
    Ok(cls.as_ref())
}
