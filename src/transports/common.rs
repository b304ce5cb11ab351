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

/// Make `core.<method>()` the `dir` watcher of `fd`, run in `context` (the transport's, on
/// 3.15+; `None`: a copy of the current one).
pub fn watch(
    event_loop: &Bound<'_, LoopCore>,
    fd: RawFd,
    dir: Direction,
    core: &Bound<'_, PyAny>,
    method: &Bound<'_, PyString>,
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let py = core.py();
    let callback = core.getattr(method)?;
    let fd = fd.into_pyobject(py)?;
    let context = context.map(|c| c.bind(py).clone());
    LoopCore::add_watch(
        event_loop,
        fd.as_any(),
        dir,
        callback,
        PyTuple::empty(py),
        context,
    )?;
    Ok(())
}

pub fn unwatch(event_loop: &Bound<'_, LoopCore>, fd: RawFd, dir: Direction) -> PyResult<()> {
    LoopCore::remove_watch_fd(event_loop, fd, dir).map(drop)
}

/// `loop.call_soon(transport._call_connection_lost, exc, context=context)`; nothing once the
/// transport is gone.
pub fn schedule_connection_lost(
    event_loop: &Bound<'_, LoopCore>,
    transport: Option<Py<PyAny>>,
    exc: Py<PyAny>,
    context: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let Some(transport) = transport else {
        return Ok(());
    };
    let py = event_loop.py();
    let callback = transport
        .bind(py)
        .getattr(intern!(py, "_call_connection_lost"))?;
    let context = context.map(|c| c.bind(py).clone());
    LoopCore::call_soon(event_loop, callback, PyTuple::new(py, [exc])?, context)?;
    Ok(())
}

/// `protocol.connection_lost(exc)` if there is a protocol (the transports' final callback).
pub fn deliver_connection_lost(
    protocol: Option<Py<PyAny>>,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    match protocol {
        Some(p) => p
            .bind(exc.py())
            .call_method1(intern!(exc.py(), "connection_lost"), (exc,))
            .map(drop),
        None => Ok(()),
    }
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

/// A write side's flow control (`_FlowControlMixin`): the water marks and whether the protocol
/// has been told to pause. The transports own the buffer; this decides when to tell the
/// protocol, so both transports make that decision the same way.
pub struct FlowControl {
    high_water: usize,
    low_water: usize,
    paused: bool,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            paused: false,
        }
    }
}

impl FlowControl {
    /// True when a buffer of `size` bytes must pause the protocol now (it was not paused).
    pub fn should_pause(&mut self, size: usize) -> bool {
        if size <= self.high_water || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// True when a buffer of `size` bytes must resume the paused protocol now.
    pub fn should_resume(&mut self, size: usize) -> bool {
        if !(self.paused && size <= self.low_water) {
            return false;
        }
        self.paused = false;
        true
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// `get_write_buffer_limits()`: (low, high).
    pub fn limits(&self) -> (usize, usize) {
        (self.low_water, self.high_water)
    }

    /// `_set_write_buffer_limits`: the stdlib's defaults and checks.
    pub fn set_limits(
        &mut self,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
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
        self.high_water = high as usize;
        self.low_water = low as usize;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_high_resumes_at_low_once_each() {
        let mut flow = FlowControl::default();
        assert!(!flow.should_pause(DEFAULT_HIGH_WATER)); // at the mark: not above it
        assert!(flow.should_pause(DEFAULT_HIGH_WATER + 1));
        assert!(!flow.should_pause(10 * DEFAULT_HIGH_WATER)); // already paused
        assert!(flow.paused());
        assert!(!flow.should_resume(DEFAULT_HIGH_WATER / 4 + 1));
        assert!(flow.should_resume(DEFAULT_HIGH_WATER / 4));
        assert!(!flow.should_resume(0)); // already resumed
        assert_eq!(flow.limits(), (DEFAULT_HIGH_WATER / 4, DEFAULT_HIGH_WATER));
    }
}
