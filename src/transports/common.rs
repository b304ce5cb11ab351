//! What every transport core shares: installing its fd's watchers (callbacks are the core's
//! own Rust methods), scheduling the Python transport's `_call_connection_lost`, reporting to
//! the loop's exception handler with the stdlib's context keys, and flow-control limits.
//!
//! Loop thread, GIL held. Nothing here holds a `GilCell` borrow.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;

pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// After this many writes to a lost connection, each further one logs a warning.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

pub fn is_fatal_to_loop(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// Make `core.<method>()` the `dir` watcher of `fd`.
pub fn watch(
    event_loop: &Bound<'_, LoopCore>,
    fd: RawFd,
    dir: Direction,
    core: &Bound<'_, PyAny>,
    method: &Bound<'_, PyString>,
) -> PyResult<()> {
    let py = core.py();
    let callback = core.getattr(method)?;
    let fd = fd.into_pyobject(py)?;
    LoopCore::add_watch(event_loop, fd.as_any(), dir, callback, PyTuple::empty(py))?;
    Ok(())
}

pub fn unwatch(event_loop: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction) -> PyResult<()> {
    LoopCore::remove_watch_fd(event_loop, fd, dir).map(drop)
}

/// `loop.call_soon(transport._call_connection_lost, exc)`; nothing once the transport is gone.
pub fn schedule_connection_lost(
    event_loop: &Bound<'_, LoopCore>,
    transport: Option<Py<PyAny>>,
    exc: Py<PyAny>,
) -> PyResult<()> {
    let Some(transport) = transport else {
        return Ok(());
    };
    let py = event_loop.py();
    let callback = transport
        .bind(py)
        .getattr(intern!(py, "_call_connection_lost"))?;
    LoopCore::call_soon(event_loop, callback, PyTuple::new(py, [exc])?, None)?;
    Ok(())
}

/// `loop.call_exception_handler({'message', 'exception', 'transport', 'protocol'})`.
pub fn report(
    event_loop: &Bound<'_, LoopCore>,
    message: &str,
    exc: &Bound<'_, PyAny>,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    let context = PyDict::new(py);
    context.set_item("message", message)?;
    context.set_item("exception", exc)?;
    context.set_item("transport", transport)?;
    context.set_item("protocol", protocol)?;
    event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// Call `protocol.pause_writing()`/`resume_writing()`; a failure goes to the exception
/// handler with `message`, as `_FlowControlMixin` does.
pub fn notify_flow(
    event_loop: &Bound<'_, LoopCore>,
    method: &Bound<'_, PyString>,
    message: &str,
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    let Some(proto) = protocol.as_ref().map(|p| p.clone_ref(py)) else {
        return Ok(());
    };
    if let Err(err) = proto.bind(py).call_method0(method) {
        if is_fatal_to_loop(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        report(event_loop, message, exc.bind(py), transport, protocol)?;
    }
    Ok(())
}

/// `_FlowControlMixin._set_write_buffer_limits`: defaults and checks; returns (high, low).
pub fn write_buffer_limits(
    high: Option<Bound<'_, PyAny>>,
    low: Option<Bound<'_, PyAny>>,
) -> PyResult<(usize, usize)> {
    let high: Option<i64> = high
        .filter(|h| !h.is_none())
        .map(|h| h.extract())
        .transpose()?;
    let low: Option<i64> = low
        .filter(|l| !l.is_none())
        .map(|l| l.extract())
        .transpose()?;
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, None) => DEFAULT_HIGH_WATER as i64,
        (None, Some(l)) => 4 * l,
    };
    let low = low.unwrap_or(high.div_euclid(4));
    if !(high >= low && low >= 0) {
        return Err(PyValueError::new_err(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high as usize, low as usize))
}
