//! What every transport core shares: the connection's bookkeeping (`Connection`: transport,
//! protocol, closing, `_conn_lost`), installing its fd's watchers (callbacks are the core's own
//! Rust methods), and one close path — `_fatal_error`, scheduling `_call_connection_lost`,
//! delivering `connection_lost` — as CPython's `_SelectorTransport` holds them once for every
//! selector transport. The write side (buffer, flow control) is `write_side.rs`.
//!
//! Loop thread, GIL held. Nothing here holds a `GilCell` borrow across a Python call.

use std::os::fd::RawFd;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::PyClass;

use crate::errors::is_fatal_to_loop;
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::support;
use crate::trace::IoKind;

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

/// The state every transport has, whatever it carries: whom it talks to and how far it is
/// from closed.
pub struct Connection {
    /// The Python transport object handed to the protocol; dropped once the connection is lost.
    pub transport: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    /// `_protocol_connected`: whether `connection_lost` goes to the protocol (the stream
    /// transport's SSL plumbing clears it; pipes keep it set).
    pub protocol_connected: bool,
    pub closing: bool,
    pub conn_lost: ConnLost,
    /// `_paused`: reading was paused (`pause_reading`); unused by write-only transports.
    pub paused: bool,
}

impl Connection {
    pub fn new(transport: Bound<'_, PyAny>, protocol: Bound<'_, PyAny>) -> Self {
        Connection {
            transport: Some(transport.unbind()),
            protocol: Some(protocol.unbind()),
            protocol_connected: true,
            closing: false,
            conn_lost: ConnLost::default(),
            paused: false,
        }
    }

    /// (transport, protocol), new references (to use once the borrow has ended).
    pub fn peers(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        (
            self.transport.as_ref().map(|t| t.clone_ref(py)),
            self.protocol.as_ref().map(|p| p.clone_ref(py)),
        )
    }

    /// `set_protocol`: the old protocol, to be dropped once the borrow has ended.
    pub fn replace_protocol(&mut self, protocol: Bound<'_, PyAny>) -> Option<Py<PyAny>> {
        self.protocol_connected = true;
        self.protocol.replace(protocol.unbind())
    }

    pub fn visit(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.protocol)
    }

    /// tp_clear: let go of the Python objects a reference cycle may run through.
    pub fn clear(&mut self) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        (self.transport.take(), self.protocol.take())
    }
}

/// A transport core: what the shared close path needs from each.
pub trait TransportCore {
    /// Errors `_fatal_error` only logs (in debug mode) instead of reporting: any `OSError` for
    /// sockets, `EIO` (the other end of a pty went away) for pipes.
    fn is_quiet_error(exc: &Bound<'_, PyAny>) -> bool;

    fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore>;

    fn fd(&self) -> RawFd;

    /// The `contextvars.Context` the transport's callbacks run in (3.15's `context=`), or
    /// `None`: a copy of the context current where each is scheduled.
    fn context(&self) -> Option<&Py<PyAny>> {
        None
    }

    /// Run `f` on the connection state; the borrow ends with `f`.
    fn with_connection<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Connection) -> R) -> R;

    /// What `_fatal_error` ends with: `_force_close(exc)` (sockets), `_close(exc)` (pipes).
    fn close_after_error(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()>;

    fn peers(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        self.with_connection(py, |conn| conn.peers(py))
    }

    fn transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.with_connection(py, |conn| conn.transport.as_ref().map(|t| t.clone_ref(py)))
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop(py).get().debug_enabled()
    }

    /// Flow control happened (reading or writing paused or resumed): for the trace.
    fn record_flow(&self, _py: Python<'_>, _kind: IoKind) {}

    /// `logger.debug("%r <what>", transport)` in debug mode, as the stdlib transports do.
    fn log_debug(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        if self.debug(py) {
            if let Some(transport) = self.transport(py) {
                support::log_transport_debug(transport.bind(py), what)?;
            }
        }
        Ok(())
    }
}

/// Make `core.<method>()` the `dir` watcher of the core's fd, run in the core's context.
pub fn watch<C: TransportCore>(
    core: &Bound<'_, PyAny>,
    this: &C,
    dir: Direction,
    method: &Bound<'_, PyString>,
) -> PyResult<()> {
    let py = core.py();
    let callback = core.getattr(method)?;
    let fd = this.fd().into_pyobject(py)?;
    let context = this.context().map(|c| c.bind(py).clone());
    LoopCore::add_watch(
        this.event_loop(py),
        fd.as_any(),
        dir,
        callback,
        PyTuple::empty(py),
        context,
        None,
    )?;
    Ok(())
}

/// `is_reading()`: neither closing nor paused.
pub fn is_reading<C: TransportCore>(this: &C, py: Python<'_>) -> bool {
    this.with_connection(py, |conn| !conn.closing && !conn.paused)
}

/// `_start_reading`, scheduled right after `connection_made` (the stdlib's
/// `call_soon(self._add_reader, fd, self._read_ready)`): install the reader unless reading
/// was paused or the transport closed in between.
pub fn start_reading<C: TransportCore + PyClass<Frozen = True> + Sync>(
    slf: &Bound<'_, C>,
) -> PyResult<()> {
    if is_reading(slf.get(), slf.py()) {
        add_reader(slf)?;
    }
    Ok(())
}

/// Mirrors `pause_reading` of `_SelectorTransport` and `_UnixReadPipeTransport`.
pub fn pause_reading<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    if !is_reading(this, py) {
        return Ok(());
    }
    this.with_connection(py, |conn| conn.paused = true);
    remove_reader(this, py)?;
    this.record_flow(py, IoKind::PauseReading);
    this.log_debug(py, "pauses reading")
}

/// Mirrors `resume_reading` of `_SelectorTransport` and `_UnixReadPipeTransport`.
pub fn resume_reading<C: TransportCore + PyClass<Frozen = True> + Sync>(
    slf: &Bound<'_, C>,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let resumed = this.with_connection(py, |conn| {
        if conn.closing || !conn.paused {
            return false;
        }
        conn.paused = false;
        true
    });
    if !resumed {
        return Ok(());
    }
    add_reader(slf)?;
    this.record_flow(py, IoKind::ResumeReading);
    this.log_debug(py, "resumes reading")
}

/// Install the core's `_read_ready` as its fd's reader.
pub fn add_reader<C: TransportCore + PyClass<Frozen = True> + Sync>(
    slf: &Bound<'_, C>,
) -> PyResult<()> {
    let py = slf.py();
    watch(
        slf.as_any(),
        slf.get(),
        Direction::Read,
        intern!(py, "_read_ready"),
    )
}

pub fn remove_reader<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    unwatch(this, py, Direction::Read)
}

pub fn unwatch<C: TransportCore>(this: &C, py: Python<'_>, dir: Direction) -> PyResult<()> {
    LoopCore::remove_watch_fd(this.event_loop(py), this.fd(), dir).map(drop)
}

/// `loop.call_soon(transport._call_connection_lost, exc, context=context)`; nothing once the
/// transport is gone.
pub fn schedule_connection_lost<C: TransportCore>(
    this: &C,
    py: Python<'_>,
    exc: Py<PyAny>,
) -> PyResult<()> {
    let Some(transport) = this.transport(py) else {
        return Ok(());
    };
    let callback = transport
        .bind(py)
        .getattr(intern!(py, "_call_connection_lost"))?;
    let context = this.context().map(|c| c.bind(py).clone());
    LoopCore::call_soon(
        this.event_loop(py),
        callback,
        Some(PyTuple::new(py, [exc])?),
        context,
    )?;
    Ok(())
}

/// `transport._call_connection_lost(None)` now (a drained close, from the writer).
pub fn call_connection_lost<C: TransportCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    if let Some(transport) = this.transport(py) {
        transport
            .bind(py)
            .call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
    }
    Ok(())
}

/// `_call_connection_lost`'s Rust half, the same for every transport: deliver
/// `protocol.connection_lost(exc)` (if a protocol is connected), then count the connection
/// lost and let go of the protocol and the transport; the Python side closes the fd.
pub fn connection_lost<C: TransportCore>(
    this: &C,
    py: Python<'_>,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let protocol = this.with_connection(py, |conn| {
        conn.protocol
            .as_ref()
            .filter(|_| conn.protocol_connected)
            .map(|p| p.clone_ref(py))
    });
    let result = match protocol {
        Some(p) => p
            .bind(py)
            .call_method1(intern!(py, "connection_lost"), (exc,))
            .map(drop),
        None => Ok(()),
    };
    let released = this.with_connection(py, |conn| {
        conn.conn_lost.mark();
        conn.closing = true;
        conn.clear()
    });
    drop(released);
    result
}

/// `loop.call_exception_handler({'message', 'exception', 'transport', 'protocol'})`.
pub fn report<C: TransportCore>(
    this: &C,
    py: Python<'_>,
    message: &str,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (transport, protocol) = this.peers(py);
    let context = PyDict::new(py);
    context.set_item("message", message)?;
    context.set_item("exception", exc)?;
    context.set_item("transport", transport)?;
    context.set_item("protocol", protocol)?;
    this.event_loop(py)
        .call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// `_fatal_error(exc, message)`: report the error (a quiet one is only logged, in debug
/// mode), then close the transport with it. `KeyboardInterrupt`/`SystemExit` propagate.
pub fn fatal_error<C: TransportCore>(
    this: &C,
    py: Python<'_>,
    err: PyErr,
    message: &str,
) -> PyResult<()> {
    if is_fatal_to_loop(py, &err) {
        return Err(err);
    }
    let exc = err.into_value(py).into_any();
    let bound = exc.bind(py);
    if C::is_quiet_error(bound) {
        if this.debug(py) {
            if let Some(transport) = this.transport(py) {
                support::log_transport_error(transport.bind(py), message, bound)?;
            }
        }
    } else {
        report(this, py, message, bound)?;
    }
    this.close_after_error(py, exc)
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
}
