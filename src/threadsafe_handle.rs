//! `ThreadSafeHandle`: what `call_soon_threadsafe` returns. As CPython 3.14's
//! `events._ThreadSafeHandle`, cancelling it (or asking whether it is cancelled) from another
//! thread waits until its callback is no longer running, so a thread that cancels knows the
//! callback either ran to its end or will never run; from the thread that runs the callback
//! (the callback cancelling its own handle) it does not wait.
//!
//! The loop thread marks the handle running around the callback (`RunLock::begin`/`end`,
//! GIL held); another thread waits on the condition variable with the GIL released, so the
//! callback, which needs the GIL, can finish. No other check is needed against the loop: with
//! the GIL held, nothing can cancel between the loop's "is it cancelled?" and `begin`.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

use crate::handles::Handle;

/// Which thread, if any, is running the handle's callback now.
#[derive(Default)]
pub struct RunLock {
    running_on: Mutex<Option<ThreadId>>,
    finished: Condvar,
}

impl RunLock {
    fn state(&self) -> MutexGuard<'_, Option<ThreadId>> {
        // Nothing panics while holding it; a poisoned lock still holds a valid Option.
        self.running_on
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn begin(&self) {
        *self.state() = Some(thread::current().id());
    }

    pub fn end(&self) {
        *self.state() = None;
        self.finished.notify_all();
    }

    /// Return once no other thread runs the callback, waiting with the GIL released.
    pub fn wait_until_idle(&self, py: Python<'_>) {
        let me = thread::current().id();
        let busy = |running: &Option<ThreadId>| running.is_some_and(|t| t != me);
        if !busy(&self.state()) {
            return;
        }
        py.detach(|| {
            let mut running = self.state();
            while busy(&running) {
                running = self
                    .finished
                    .wait(running)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        });
    }
}

#[pyclass(module = "ferroloop", extends = Handle, frozen)]
pub struct ThreadSafeHandle;

#[pymethods]
impl ThreadSafeHandle {
    /// `events._ThreadSafeHandle` where the interpreter has it (3.14+). A Rust type cannot
    /// subclass that pure-Python class, and asyncio's own tests (and code written for 3.14)
    /// check `isinstance(handle, events._ThreadSafeHandle)`, which consults `__class__`.
    #[getter]
    fn __class__(slf: &Bound<'_, Self>) -> PyResult<Py<PyType>> {
        static STDLIB: PyOnceLock<Option<Py<PyType>>> = PyOnceLock::new();
        let py = slf.py();
        let stdlib = STDLIB.get_or_try_init(py, || -> PyResult<_> {
            let events = py.import("asyncio.events")?;
            Ok(events
                .getattr("_ThreadSafeHandle")
                .ok()
                .and_then(|cls| cls.cast_into::<PyType>().ok())
                .map(Bound::unbind))
        })?;
        Ok(match stdlib {
            Some(cls) => cls.clone_ref(py),
            None => slf.get_type().unbind(),
        })
    }
}
