//! `ReadPipeCore` and `WritePipeCore`: the Rust halves of the pipe transports that
//! `connect_read_pipe`/`connect_write_pipe` (and subprocesses' stdin/stdout/stderr) use, with
//! the standard library's `_UnixReadPipeTransport`/`_UnixWritePipeTransport` semantics.
//!
//! Loop thread, GIL held. Reads go through the loop's scratch buffer into a `bytes` of exactly
//! the size read (the stdlib's `os.read(fd, 256 KiB)` allocates — and on glibc maps — a fresh
//! 256 KiB object per read); writes go straight from the caller's buffer, and only the unsent
//! tail is buffered. The Python wrappers are in `python/ferroloop/_pipes.py`.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyOSError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyTuple};

use crate::buffers::ByteView;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::gil_cell::GilCell;
use crate::socket_io;
use crate::support;
use crate::trace::IoKind;
use crate::write_buffer::WriteBuffer;

use super::common::{
    self, is_fatal_to_loop, ConnLost, FlowControl, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// A pipe that has carried this much gets a bigger kernel buffer ...
const GROW_AFTER_BYTES: u64 = 4 << 20;
/// ... of this size (Linux's default `pipe-max-size`). The default 64 KiB means a wake-up per
/// 64 KiB; only busy pipes are grown, because the kernel charges pipe buffers to a per-user
/// budget that every other pipe of the user shares.
const GROWN_PIPE_SIZE: usize = 1 << 20;

/// What both pipe cores hold: the loop and the fd, and how much the pipe has carried.
struct Ends {
    event_loop: Py<LoopCore>,
    fd: RawFd,
    carried: std::sync::atomic::AtomicU64,
}

impl Ends {
    fn new(event_loop: Bound<'_, LoopCore>, fd: RawFd) -> Ends {
        Ends {
            event_loop: event_loop.unbind(),
            fd,
            carried: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    /// Count (and, when tracing, record) an I/O event on this pipe.
    fn io_event(&self, py: Python<'_>, kind: IoKind, bytes: usize) {
        self.event_loop(py)
            .get()
            .instruments()
            .on_io(py, kind, self.fd, bytes);
    }

    /// Count `n` bytes moved through the pipe; grow its buffer once it proves busy.
    fn carried(&self, n: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let before = self.carried.fetch_add(n as u64, Relaxed);
        if before < GROW_AFTER_BYTES && before + n as u64 >= GROW_AFTER_BYTES {
            socket_io::grow_pipe(self.fd, GROWN_PIPE_SIZE);
        }
    }
}

fn clone_opt(py: Python<'_>, obj: Option<&Py<PyAny>>) -> Option<Py<PyAny>> {
    obj.map(|o| o.clone_ref(py))
}

/// Which errors a pipe transport's `_fatal_error` only logs (in debug mode) instead of
/// passing to the exception handler: the stdlib's two pipe transports differ.
#[derive(Clone, Copy)]
enum QuietErrors {
    /// The read end: EIO, the other end of a pty went away.
    Eio,
    /// The write end: any OSError (EPIPE when the reader went away is the common one).
    AnyOsError,
}

/// `_fatal_error` of both pipe transports: the `quiet` errors are only logged in debug mode,
/// anything else goes to the exception handler; then `close(exc)`.
fn report_fatal(
    ends: &Ends,
    py: Python<'_>,
    err: PyErr,
    message: &str,
    quiet: QuietErrors,
    (transport, protocol): (Option<Py<PyAny>>, Option<Py<PyAny>>),
) -> PyResult<Py<PyAny>> {
    if is_fatal_to_loop(py, &err) {
        return Err(err);
    }
    let exc = err.into_value(py).into_any();
    let bound = exc.bind(py);
    let is_os_error = bound.is_instance_of::<PyOSError>();
    let is_quiet = match quiet {
        QuietErrors::AnyOsError => is_os_error,
        QuietErrors::Eio => {
            is_os_error
                && bound
                    .getattr(intern!(py, "errno"))
                    .and_then(|e| e.extract::<i32>())
                    .is_ok_and(|e| e == libc::EIO)
        }
    };
    if is_quiet {
        if ends.event_loop(py).get().debug_enabled() {
            if let Some(t) = &transport {
                support::log_transport_error(t.bind(py), message, bound)?;
            }
        }
    } else {
        common::report(ends.event_loop(py), message, bound, transport, protocol)?;
    }
    Ok(exc)
}

// -- reading ------------------------------------------------------------------------------

struct ReadState {
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    closing: bool,
    paused: bool,
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct ReadPipeCore {
    ends: Ends,
    state: GilCell<ReadState>,
}

impl ReadPipeCore {
    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.closing && !st.paused
    }

    fn add_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let ends = &slf.get().ends;
        common::watch(
            ends.event_loop(py),
            ends.fd,
            Direction::Read,
            slf.as_any(),
            intern!(py, "_read_ready"),
            None,
        )
    }

    fn remove_reader(&self, py: Python<'_>) -> PyResult<()> {
        common::unwatch(self.ends.event_loop(py), self.ends.fd, Direction::Read)
    }

    /// `_close(exc)`: stop reading and schedule `connection_lost`.
    fn close_with(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let transport = {
            let mut st = self.state.borrow_mut(py);
            st.closing = true;
            clone_opt(py, st.transport.as_ref())
        };
        self.remove_reader(py)?;
        common::schedule_connection_lost(self.ends.event_loop(py), transport, exc, None)
    }

    fn fatal_error(&self, py: Python<'_>, err: PyErr, message: &str) -> PyResult<()> {
        let (transport, protocol) = {
            let st = self.state.borrow(py);
            (
                clone_opt(py, st.transport.as_ref()),
                clone_opt(py, st.protocol.as_ref()),
            )
        };
        let exc = report_fatal(
            &self.ends,
            py,
            err,
            message,
            QuietErrors::Eio,
            (transport, protocol),
        )?;
        self.close_with(py, exc)
    }

    fn on_eof(&self, py: Python<'_>) -> PyResult<()> {
        let (transport, protocol) = {
            let mut st = self.state.borrow_mut(py);
            st.closing = true;
            (
                clone_opt(py, st.transport.as_ref()),
                clone_opt(py, st.protocol.as_ref()),
            )
        };
        if self.ends.event_loop(py).get().debug_enabled() {
            if let Some(t) = &transport {
                support::log_transport_debug(t.bind(py), "was closed by peer")?;
            }
        }
        self.remove_reader(py)?;
        let event_loop = self.ends.event_loop(py);
        if let Some(protocol) = protocol {
            let eof_received = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
            LoopCore::call_soon(event_loop, eof_received, PyTuple::empty(py), None)?;
        }
        common::schedule_connection_lost(event_loop, transport, py.None(), None)
    }
}

#[pymethods]
impl ReadPipeCore {
    #[new]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        fd: RawFd,
        transport: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
    ) -> Self {
        ReadPipeCore {
            ends: Ends::new(event_loop, fd),
            state: GilCell::new(ReadState {
                transport: Some(transport.unbind()),
                protocol: Some(protocol.unbind()),
                closing: false,
                paused: false,
            }),
        }
    }

    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().is_reading_now(slf.py()) {
            Self::add_reader(slf)?;
        }
        Ok(())
    }

    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let data = {
            let event_loop = self.ends.event_loop(py).get();
            let mut buf = event_loop.read_buffer(py);
            match socket_io::read(self.ends.fd, &mut buf[..]) {
                Ok(None) => return Ok(()),
                Ok(Some(n)) => {
                    self.ends.carried(n);
                    self.ends.io_event(py, IoKind::Read, n);
                    PyBytes::new(py, &buf[..n])
                }
                Err(err) => {
                    drop(buf);
                    return self.fatal_error(
                        py,
                        os_error(err),
                        "Fatal read error on pipe transport",
                    );
                }
            }
        };
        if data.as_bytes().is_empty() {
            return self.on_eof(py);
        }
        let Some(protocol) = clone_opt(py, self.state.borrow(py).protocol.as_ref()) else {
            return Ok(());
        };
        // As in the stdlib, an exception from data_received is not the transport's to handle:
        // it goes to the loop's exception handler as an exception in this callback.
        protocol
            .bind(py)
            .call_method1(intern!(py, "data_received"), (data,))?;
        Ok(())
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        if !self.is_reading_now(py) {
            return Ok(());
        }
        self.state.borrow_mut(py).paused = true;
        self.ends.io_event(py, IoKind::PauseReading, 0);
        self.remove_reader(py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut st = slf.get().state.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        slf.get().ends.io_event(py, IoKind::ResumeReading, 0);
        Self::add_reader(slf)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self
            .state
            .borrow_mut(py)
            .protocol
            .replace(protocol.unbind());
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, self.state.borrow(py).protocol.as_ref())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).closing {
            return Ok(());
        }
        self.close_with(py, py.None())
    }

    fn _close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.close_with(py, exc)
    }

    /// Deliver `connection_lost(exc)` and let go of the protocol and the transport.
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let protocol = clone_opt(py, self.state.borrow(py).protocol.as_ref());
        let result = common::deliver_connection_lost(protocol, &exc);
        let released = {
            let mut st = self.state.borrow_mut(py);
            st.closing = true;
            (st.protocol.take(), st.transport.take())
        };
        drop(released);
        result
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).paused
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ends.event_loop)?;
        if let Some(st) = self.state.try_borrow_unchecked() {
            visit.call(&st.transport)?;
            visit.call(&st.protocol)?;
        }
        Ok(())
    }
}

// -- writing ------------------------------------------------------------------------------

struct WriteState {
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    closing: bool,
    conn_lost: ConnLost,
    buffer: WriteBuffer,
    writer_installed: bool,
    flow: FlowControl,
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct WritePipeCore {
    ends: Ends,
    /// Whether the write end is also watched for readability, which is how the closing of the
    /// other end shows (pipes and sockets; not character devices).
    watches_peer: bool,
    state: GilCell<WriteState>,
}

impl WritePipeCore {
    fn refs(&self, py: Python<'_>) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        let st = self.state.borrow(py);
        (
            clone_opt(py, st.transport.as_ref()),
            clone_opt(py, st.protocol.as_ref()),
        )
    }

    fn unwatch(&self, py: Python<'_>, dir: Direction) -> PyResult<()> {
        if dir == Direction::Write {
            self.state.borrow_mut(py).writer_installed = false;
        }
        common::unwatch(self.ends.event_loop(py), self.ends.fd, dir)
    }

    fn add_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        common::watch(
            this.ends.event_loop(py),
            this.ends.fd,
            Direction::Write,
            slf.as_any(),
            intern!(py, "_write_ready"),
            None,
        )?;
        this.state.borrow_mut(py).writer_installed = true;
        Ok(())
    }

    /// `_close(exc)`: drop what is buffered, stop watching, schedule `connection_lost`.
    fn close_with(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let (had_buffer, transport) = {
            let mut st = self.state.borrow_mut(py);
            st.closing = true;
            let had_buffer = !st.buffer.is_empty() || st.writer_installed;
            st.buffer.clear();
            (had_buffer, clone_opt(py, st.transport.as_ref()))
        };
        if had_buffer {
            self.unwatch(py, Direction::Write)?;
        }
        self.unwatch(py, Direction::Read)?;
        common::schedule_connection_lost(self.ends.event_loop(py), transport, exc, None)
    }

    fn fatal_error(&self, py: Python<'_>, err: PyErr, message: &str) -> PyResult<()> {
        let (transport, protocol) = self.refs(py);
        let exc = report_fatal(
            &self.ends,
            py,
            err,
            message,
            QuietErrors::AnyOsError,
            (transport, protocol),
        )?;
        self.close_with(py, exc)
    }

    fn notify_flow(&self, py: Python<'_>, pause: bool) -> PyResult<()> {
        let flow = if pause {
            IoKind::PauseWriting
        } else {
            IoKind::ResumeWriting
        };
        self.ends.io_event(py, flow, 0);
        let (transport, protocol) = self.refs(py);
        let (method, message) = if pause {
            (
                intern!(py, "pause_writing"),
                "protocol.pause_writing() failed",
            )
        } else {
            (
                intern!(py, "resume_writing"),
                "protocol.resume_writing() failed",
            )
        };
        common::notify_flow(
            self.ends.event_loop(py),
            method,
            message,
            transport,
            protocol,
        )
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = self.state.borrow_mut(py);
            let size = st.buffer.len();
            if !st.flow.should_pause(size) {
                return Ok(());
            }
        }
        self.notify_flow(py, true)
    }

    fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = self.state.borrow_mut(py);
            let size = st.buffer.len();
            if !st.flow.should_resume(size) {
                return Ok(());
            }
        }
        self.notify_flow(py, false)
    }
}

#[pymethods]
impl WritePipeCore {
    #[new]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        fd: RawFd,
        transport: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        watches_peer: bool,
    ) -> Self {
        WritePipeCore {
            ends: Ends::new(event_loop, fd),
            watches_peer,
            state: GilCell::new(WriteState {
                transport: Some(transport.unbind()),
                protocol: Some(protocol.unbind()),
                closing: false,
                conn_lost: ConnLost::default(),
                buffer: WriteBuffer::new(),
                writer_installed: false,
                flow: FlowControl::default(),
            }),
        }
    }

    /// Scheduled right after `connection_made`: watch for the other end closing.
    fn _start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.watches_peer {
            common::watch(
                this.ends.event_loop(py),
                this.ends.fd,
                Direction::Read,
                slf.as_any(),
                intern!(py, "_read_ready"),
                None,
            )?;
        }
        Ok(())
    }

    /// The write end became readable: the reader went away.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let (transport, buffered) = {
            let st = self.state.borrow(py);
            (clone_opt(py, st.transport.as_ref()), !st.buffer.is_empty())
        };
        if self.ends.event_loop(py).get().debug_enabled() {
            if let Some(t) = &transport {
                support::log_transport_debug(t.bind(py), "was closed by peer")?;
            }
        }
        if buffered {
            let exc = PyBrokenPipeError::new_err(()).into_value(py).into_any();
            self.close_with(py, exc)
        } else {
            self.close_with(py, py.None())
        }
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !(data.is_instance_of::<PyBytes>()
            || data.is_instance_of::<PyByteArray>()
            || data.is_instance_of::<PyMemoryView>())
        {
            // The stdlib asserts the type; the same exception, with the same message.
            return Err(PyAssertionError::new_err(data.repr()?.unbind()));
        }
        if data.len()? == 0 {
            return Ok(()); // `if not data` (a released memoryview raises here)
        }
        let (lost, buffer_empty) = {
            let mut st = this.state.borrow_mut(py);
            if st.conn_lost.is_lost() || st.closing {
                let warn = st.conn_lost.count() >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn_lost.record();
                (Some(warn), false)
            } else {
                (None, st.buffer.is_empty() && !st.writer_installed)
            }
        };
        if let Some(warn) = lost {
            if warn {
                support::log_warning(
                    py,
                    "pipe closed by peer or os.write(pipe, data) raised exception.",
                )?;
            }
            return Ok(());
        }
        // A memoryview that is not C-contiguous: `os.write` fails with BufferError, which the
        // standard transport treats as a fatal write error.
        let view = match ByteView::new(data) {
            Ok(view) => view,
            Err(err) => {
                this.state.borrow_mut(py).conn_lost.record();
                return this.fatal_error(py, err, "Fatal write error on pipe transport");
            }
        };
        let mut sent = 0;
        if buffer_empty {
            match socket_io::write_vectored(this.ends.fd, &[view.as_slice()]) {
                Ok(Some(n)) => {
                    this.ends.carried(n);
                    this.ends.io_event(py, IoKind::Write, n);
                    sent = n;
                }
                Ok(None) => {}
                Err(err) => {
                    this.state.borrow_mut(py).conn_lost.record();
                    return this.fatal_error(
                        py,
                        os_error(err),
                        "Fatal write error on pipe transport",
                    );
                }
            }
            if sent == view.len() {
                return Ok(());
            }
            Self::add_writer(slf)?;
        }
        this.state
            .borrow_mut(py)
            .buffer
            .push(&view.as_slice()[sent..]);
        this.maybe_pause_protocol(py)
    }

    /// `WriteTransport.writelines`, which the standard pipe transport inherits: one write of
    /// `b''.join(list_of_data)` (so its TypeError for a non-bytes item, before any write).
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let data = PyBytes::new(py, b"").call_method1(intern!(py, "join"), (list_of_data,))?;
        Self::write(slf, &data)
    }

    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        let outcome = {
            let st = self.state.borrow(py);
            if st.buffer.is_empty() {
                return Ok(());
            }
            socket_io::write_vectored(self.ends.fd, &st.buffer.front_slices(64))
        };
        match outcome {
            Ok(None) => Ok(()),
            Err(err) => {
                {
                    let mut st = self.state.borrow_mut(py);
                    st.buffer.clear();
                    st.conn_lost.record();
                }
                self.unwatch(py, Direction::Write)?;
                self.fatal_error(py, os_error(err), "Fatal write error on pipe transport")
            }
            Ok(Some(n)) => {
                self.ends.carried(n);
                self.ends.io_event(py, IoKind::Write, n);
                let (drained, closing, transport) = {
                    let mut st = self.state.borrow_mut(py);
                    st.buffer.consume(n);
                    (
                        st.buffer.is_empty(),
                        st.closing,
                        clone_opt(py, st.transport.as_ref()),
                    )
                };
                if !drained {
                    return Ok(());
                }
                self.unwatch(py, Direction::Write)?;
                self.maybe_resume_protocol(py)?; // may write more
                if closing {
                    self.unwatch(py, Direction::Read)?;
                    if let Some(t) = transport {
                        t.bind(py)
                            .call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
                    }
                }
                Ok(())
            }
        }
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let (empty, transport) = {
            let mut st = self.state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            (st.buffer.is_empty(), clone_opt(py, st.transport.as_ref()))
        };
        if empty {
            self.unwatch(py, Direction::Read)?;
            common::schedule_connection_lost(self.ends.event_loop(py), transport, py.None(), None)?;
        }
        Ok(())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.write_eof(py)
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.close_with(py, py.None())
    }

    fn _close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.close_with(py, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self
            .state
            .borrow_mut(py)
            .protocol
            .replace(protocol.unbind());
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        clone_opt(py, self.state.borrow(py).protocol.as_ref())
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.borrow(py).buffer.len()
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        self.state.borrow(py).flow.reported(py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let marks = common::write_buffer_limits(py, high, low)?;
        let replaced = self.state.borrow_mut(py).flow.set_limits(marks);
        drop(replaced); // after the borrow
        self.maybe_pause_protocol(py)
    }

    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let protocol = clone_opt(py, self.state.borrow(py).protocol.as_ref());
        let result = common::deliver_connection_lost(protocol, &exc);
        let released = {
            let mut st = self.state.borrow_mut(py);
            st.closing = true;
            st.conn_lost.mark();
            (st.protocol.take(), st.transport.take())
        };
        drop(released);
        result
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.borrow(py).conn_lost.count()
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).flow.paused()
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.ends.event_loop)?;
        if let Some(st) = self.state.try_borrow_unchecked() {
            visit.call(&st.transport)?;
            visit.call(&st.protocol)?;
        }
        Ok(())
    }
}
