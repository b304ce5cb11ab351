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

use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// The thread running the handle's callback now (its `pthread_self`), 0 when none. Marking
/// costs two atomic stores per run and no allocation: `call_soon_threadsafe` is a hot path.
/// Waiting is rare (another thread cancels while the callback runs), so it polls with backoff
/// instead of keeping a condition variable per handle.
#[derive(Default)]
pub struct RunLock {
    running_on: AtomicU64,
}

fn this_thread() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail; it is never 0 on Linux.
    unsafe { libc::pthread_self() as u64 }
}

impl RunLock {
    pub fn begin(&self) {
        self.running_on.store(this_thread(), Ordering::Release);
    }

    pub fn end(&self) {
        self.running_on.store(0, Ordering::Release);
    }

    /// Return once no other thread runs the callback, waiting with the GIL released.
    pub fn wait_until_idle(&self, py: Python<'_>) {
        let me = this_thread();
        let busy = || {
            let running = self.running_on.load(Ordering::Acquire);
            running != 0 && running != me
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

/// `events._ThreadSafeHandle` where the interpreter has it (3.14+).
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
