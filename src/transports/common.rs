//! What every transport core shares: installing its fd's watchers (callbacks are the core's
//! own Rust methods), scheduling the Python transport's `_call_connection_lost`, reporting to
//! the loop's exception handler with the stdlib's context keys, and flow-control limits.
//!
//! Loop thread, GIL held. Nothing here holds a `GilCell` borrow.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOverflowError, PySystemExit, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyInt, PyString, PyTuple};

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

/// `_conn_lost`: how many times the connection was found lost (writes to it included). It
/// saturates: a wrapped count would read 0, "connected", and send to a released fd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnLost(u32);

impl ConnLost {
    pub fn is_lost(self) -> bool {
        self.0 > 0
    }

    pub fn record(&mut self) {
        self.0 = self.0.saturating_add(1);
    }

    /// Lost, whatever was counted before (`connection_lost` has been delivered).
    pub fn mark(&mut self) {
        self.0 = self.0.max(1);
    }

    pub fn count(self) -> u32 {
        self.0
    }
}

/// A write side's flow control (`_FlowControlMixin`): the water marks and whether the protocol
/// has been told to pause. The transports own the buffer; this decides when to tell the
/// protocol, so both transports make that decision the same way.
pub struct FlowControl {
    high_water: usize,
    low_water: usize,
    paused: bool,
    /// (low, high) as the caller's values made them, for `get_write_buffer_limits`: the
    /// standard transport reports the objects it computed (ints beyond 64 bits, floats).
    as_set: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            paused: false,
            as_set: None,
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

    /// The marks the buffer size is compared with: (low, high).
    pub fn limits(&self) -> (usize, usize) {
        (self.low_water, self.high_water)
    }

    /// `get_write_buffer_limits()`: (low, high) as they were set, or the byte counts.
    pub fn reported(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        if let Some((low, high)) = &self.as_set {
            return Ok((low.clone_ref(py), high.clone_ref(py)));
        }
        Ok((
            self.low_water.into_pyobject(py)?.into_any().unbind(),
            self.high_water.into_pyobject(py)?.into_any().unbind(),
        ))
    }

    /// Install marks made by [`write_buffer_limits`]. Returns the objects they replace, for
    /// the caller to drop once its borrow has ended (dropping may run Python code).
    #[must_use]
    pub fn set_limits(&mut self, marks: WaterMarks) -> Option<(Py<PyAny>, Py<PyAny>)> {
        self.high_water = marks.high;
        self.low_water = marks.low;
        self.as_set.replace(marks.as_set)
    }
}

/// Water marks checked by [`write_buffer_limits`]: byte counts, and (low, high) as given.
pub struct WaterMarks {
    high: usize,
    low: usize,
    as_set: (Py<PyAny>, Py<PyAny>),
}

/// `_set_write_buffer_limits`'s defaults and checks, in Python arithmetic on whatever the
/// caller passed (ints of any size, floats, objects with operators), so the same values pass
/// and the same exceptions come out as with the standard library. Called before any borrow
/// of the transport's state: the operators may be Python code that re-enters the transport.
/// The byte counts round fractions down and saturate marks beyond memory, which compares
/// with a buffer size exactly as the marks themselves do.
pub fn write_buffer_limits(
    py: Python<'_>,
    high: Option<Bound<'_, PyAny>>,
    low: Option<Bound<'_, PyAny>>,
) -> PyResult<WaterMarks> {
    let high = high.filter(|h| !h.is_none());
    let low = low.filter(|l| !l.is_none());
    let high = match (high, &low) {
        (Some(h), _) => h,
        (None, None) => DEFAULT_HIGH_WATER.into_pyobject(py)?.into_any(),
        (None, Some(l)) => 4i64.into_pyobject(py)?.mul(l)?,
    };
    let low = match low {
        Some(l) => l,
        None => high.floor_div(4)?,
    };
    if !(high.ge(&low)? && low.ge(0)?) {
        return Err(PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            high.repr()?,
            low.repr()?
        )));
    }
    Ok(WaterMarks {
        high: byte_count(&high)?,
        low: byte_count(&low)?,
        as_set: (low.unbind(), high.unbind()),
    })
}

/// A water mark already known to be >= 0, as a byte count a buffer size is compared with.
fn byte_count(mark: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = mark.py();
    let whole = if mark.is_instance_of::<PyInt>() {
        mark.clone()
    } else {
        static FLOOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        match FLOOR.import(py, "math", "floor")?.call1((mark,)) {
            Ok(whole) => whole,
            Err(err) if err.is_instance_of::<PyOverflowError>(py) => return Ok(usize::MAX), // inf
            Err(err) => return Err(err),
        }
    };
    match whole.extract::<usize>() {
        Ok(n) => Ok(n),
        Err(err) if err.is_instance_of::<PyOverflowError>(py) => Ok(usize::MAX),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conn_lost_saturates_instead_of_wrapping_to_connected() {
        let mut lost = ConnLost(u32::MAX - 1);
        for _ in 0..3 {
            lost.record();
        }
        assert!(lost.is_lost());
        assert_eq!(lost.count(), u32::MAX);
        let mut fresh = ConnLost::default();
        assert!(!fresh.is_lost());
        fresh.mark();
        assert_eq!(fresh.count(), 1);
    }

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
