//! `ReadPipeCore` and `WritePipeCore`: the Rust halves of the pipe transports that
//! `connect_read_pipe`/`connect_write_pipe` (and subprocesses' stdin/stdout/stderr) use, with
//! the standard library's `_UnixReadPipeTransport`/`_UnixWritePipeTransport` semantics. The
//! write side is `write_side.rs`, the close path `common.rs`; this file says how a pipe
//! differs from a socket.
//!
//! Loop thread, GIL held. Reads go through the loop's scratch buffer into a `bytes` of exactly
//! the size read (the stdlib's `os.read(fd, 256 KiB)` allocates — and on glibc maps — a fresh
//! 256 KiB object per read); writes go straight from the caller's buffer, and only the unsent
//! tail is buffered. The Python wrappers are in `python/ferroloop/_pipes.py`.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use pyo3::exceptions::{PyAssertionError, PyBrokenPipeError, PyOSError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;
use pyo3::PyTraverseError;

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::gil_cell::GilCell;
use crate::sys::nonblocking;
use crate::trace::IoKind;

use super::common::{self, Connection, TransportCore};
use super::write_side::{self, Flushed, WriteCore, WriteSide};

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
    carried: AtomicU64,
}

impl Ends {
    fn new(event_loop: Bound<'_, LoopCore>, fd: RawFd) -> Ends {
        Ends {
            event_loop: event_loop.unbind(),
            fd,
            carried: AtomicU64::new(0),
        }
    }

    /// Count (and, when tracing, record) an I/O event on this pipe.
    fn io_event(&self, py: Python<'_>, kind: IoKind, bytes: usize) {
        self.event_loop
            .bind(py)
            .get()
            .instruments()
            .on_io(py, kind, self.fd, bytes);
    }

    /// Count `n` bytes moved through the pipe; grow its buffer once it proves busy.
    fn carried(&self, n: usize) {
        let before = self.carried.fetch_add(n as u64, Relaxed);
        if before < GROW_AFTER_BYTES && before + n as u64 >= GROW_AFTER_BYTES {
            nonblocking::grow_pipe(self.fd, GROWN_PIPE_SIZE);
        }
    }
}

/// `_fatal_error` of the read pipe only logs EIO (the other end of a pty went away).
fn is_eio(exc: &Bound<'_, PyAny>) -> bool {
    exc.is_instance_of::<PyOSError>()
        && exc
            .getattr(intern!(exc.py(), "errno"))
            .and_then(|e| e.extract::<i32>())
            .is_ok_and(|e| e == libc::EIO)
}

/// `_fatal_error` of the write pipe only logs any OSError (EPIPE when the reader went away
/// is the common one).
fn is_os_error(exc: &Bound<'_, PyAny>) -> bool {
    exc.is_instance_of::<PyOSError>()
}

/// Both pipe cores answer the close path the same way (`_UnixReadPipeTransport` and
/// `_UnixWritePipeTransport` have the same `_fatal_error` and `_close(exc)` but for which
/// errors are only logged: `$quiet`).
macro_rules! pipe_transport_core {
    ($core:ty, $quiet:path) => {
        impl TransportCore for $core {
            fn is_quiet_error(exc: &Bound<'_, PyAny>) -> bool {
                $quiet(exc)
            }

            fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
                self.ends.event_loop.bind(py)
            }

            fn fd(&self) -> RawFd {
                self.ends.fd
            }

            fn with_connection<R>(
                &self,
                py: Python<'_>,
                f: impl FnOnce(&mut Connection) -> R,
            ) -> R {
                self.state.with_borrow_mut(py, |st| f(&mut st.conn))
            }

            fn close_after_error(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
                self._close(py, exc)
            }

            fn record_flow(&self, py: Python<'_>, kind: IoKind) {
                self.ends.io_event(py, kind, 0);
            }
        }
    };
}

// -- reading ------------------------------------------------------------------------------

struct ReadState {
    conn: Connection,
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct ReadPipeCore {
    ends: Ends,
    state: GilCell<ReadState>,
}

pipe_transport_core!(ReadPipeCore, is_eio);

impl ReadPipeCore {
    /// The read returned b"": the writer closed its end.
    fn on_eof(&self, py: Python<'_>) -> PyResult<()> {
        self.log_debug(py, "was closed by peer")?;
        let protocol = self.state.with_borrow_mut(py, |st| {
            st.conn.closing = true;
            st.conn.protocol.as_ref().map(|p| p.clone_ref(py))
        });
        common::remove_reader(self, py)?;
        if let Some(protocol) = protocol {
            let eof_received = protocol.bind(py).getattr(intern!(py, "eof_received"))?;
            LoopCore::call_soon(self.event_loop(py), eof_received, None, None)?;
        }
        common::schedule_connection_lost(self, py, py.None())
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
                conn: Connection::new(transport, protocol),
            }),
        }
    }

    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::start_reading(slf)
    }

    /// Mirrors `_UnixReadPipeTransport._read_ready`.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let received = self.event_loop(py).get().with_read_buffer(py, |buf| {
            nonblocking::read(self.ends.fd, buf).map(|n| n.map(|n| PyBytes::new(py, &buf[..n])))
        });
        let data = match received {
            Ok(None) => return Ok(()),
            Ok(Some(data)) => data,
            Err(err) => {
                return common::fatal_error(
                    self,
                    py,
                    os_error(err),
                    "Fatal read error on pipe transport",
                );
            }
        };
        self.ends.carried(data.as_bytes().len());
        self.ends.io_event(py, IoKind::Read, data.as_bytes().len());
        if data.as_bytes().is_empty() {
            return self.on_eof(py);
        }
        let protocol = self
            .state
            .with_borrow(py, |st| st.conn.protocol.as_ref().map(|p| p.clone_ref(py)));
        let Some(protocol) = protocol else {
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
        common::is_reading(self, py)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        common::pause_reading(self, py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::resume_reading(slf)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self
            .state
            .with_borrow_mut(py, |st| st.conn.replace_protocol(protocol));
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.peers(py).1
    }

    /// Mirrors `_UnixReadPipeTransport.close`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.with_borrow(py, |st| st.conn.closing) {
            return Ok(());
        }
        self._close(py, py.None())
    }

    /// Mirrors `_UnixReadPipeTransport._close`: stop reading and schedule
    /// `connection_lost(exc)`.
    fn _close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.state.with_borrow_mut(py, |st| st.conn.closing = true);
        common::remove_reader(self, py)?;
        common::schedule_connection_lost(self, py, exc)
    }

    /// `_call_connection_lost`'s Rust half: deliver `connection_lost(exc)` and let go of the
    /// protocol and the transport (the Python side closes the pipe).
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        common::connection_lost(self, py, &exc)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.paused)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.ends.event_loop)?;
        self.state
            .traverse(&visit, |st, visit| st.conn.visit(visit))
    }

    fn __clear__(&self, py: Python<'_>) {
        let released = self.state.with_borrow_mut(py, |st| st.conn.clear());
        drop(released);
    }
}

// -- writing ------------------------------------------------------------------------------

struct WriteState {
    conn: Connection,
    write: WriteSide,
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct WritePipeCore {
    ends: Ends,
    /// Whether the write end is also watched for readability, which is how the closing of the
    /// other end shows (pipes and sockets; not character devices).
    watches_peer: bool,
    state: GilCell<WriteState>,
}

const PIPE_WRITE_ERROR: &str = "Fatal write error on pipe transport";

pipe_transport_core!(WritePipeCore, is_os_error);

impl WriteCore for WritePipeCore {
    const WRITE_ERROR: &'static str = PIPE_WRITE_ERROR;
    const LOST_WRITE_WARNING: &'static str =
        "pipe closed by peer or os.write(pipe, data) raised exception.";
    const CLOSING_DROPS_WRITES: bool = true;
    const RESUMES_WHILE_DRAINING: bool = false;

    fn with_write_side<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Connection, &mut WriteSide) -> R,
    ) -> R {
        self.state
            .with_borrow_mut(py, |st| f(&mut st.conn, &mut st.write))
    }

    /// The stdlib asserts the type; the same exception, with the same message.
    fn check_data_type(data: &Bound<'_, PyAny>) -> PyResult<()> {
        if write_side::is_bytes_like(data) {
            return Ok(());
        }
        Err(PyAssertionError::new_err(data.repr()?.unbind()))
    }

    /// `_UnixWritePipeTransport` inherits `WriteTransport.writelines` (in every release so far).
    fn stdlib_has_own_writelines(py: Python<'_>) -> PyResult<bool> {
        static OWN: PyOnceLock<bool> = PyOnceLock::new();
        write_side::cached_stdlib_defines(
            &OWN,
            py,
            (
                "asyncio.unix_events",
                "_UnixWritePipeTransport",
                "writelines",
            ),
        )
    }

    fn writable_fd(&self, _py: Python<'_>) -> PyResult<RawFd> {
        Ok(self.ends.fd)
    }

    fn write_fd(fd: RawFd, slices: &[&[u8]]) -> std::io::Result<Option<usize>> {
        nonblocking::write_vectored(fd, slices)
    }

    fn wrote(&self, py: Python<'_>, n: usize) {
        self.ends.carried(n);
        self.ends.io_event(py, IoKind::Write, n);
    }

    fn write_failed(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        self.state
            .with_borrow_mut(py, |st| st.conn.conn_lost.record());
        common::fatal_error(self, py, err, PIPE_WRITE_ERROR)
    }

    /// Mirrors `_UnixWritePipeTransport._write_ready`.
    fn flush_buffer(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.with_borrow(py, |st| st.write.buffer.is_empty()) {
            return Ok(());
        }
        match write_side::flush(self, py)? {
            Flushed::Pending => Ok(()),
            Flushed::Failed(err) => self.write_failed(py, err),
            Flushed::Drained => {
                if self.state.with_borrow(py, |st| st.conn.closing) {
                    common::remove_reader(self, py)?;
                    common::call_connection_lost(self, py)?;
                }
                Ok(())
            }
        }
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
                conn: Connection::new(transport, protocol),
                write: WriteSide::default(),
            }),
        }
    }

    /// Scheduled right after `connection_made`: install the reader that sees the other end
    /// close (the stdlib's `call_soon(self._loop._add_reader, self._fileno, self._read_ready)`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        if slf.get().watches_peer {
            common::watch(
                slf.as_any(),
                slf.get(),
                Direction::Read,
                intern!(py, "_read_ready"),
            )?;
        }
        Ok(())
    }

    /// Mirrors `_UnixWritePipeTransport._read_ready`: the reader went away.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        self.log_debug(py, "was closed by peer")?;
        if self.state.with_borrow(py, |st| st.write.buffer.is_empty()) {
            self._close(py, py.None())
        } else {
            let exc = PyBrokenPipeError::new_err(()).into_value(py).into_any();
            self._close(py, exc)
        }
    }

    /// Mirrors `_UnixWritePipeTransport.write`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        write_side::write(slf, data)
    }

    /// `WriteTransport.writelines`, which the standard pipe transport inherits: the items
    /// are checked before anything is written (its TypeError), then written as one.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        write_side::writelines(slf, list_of_data)
    }

    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        self.flush_buffer(py)
    }

    /// Mirrors `_UnixWritePipeTransport.write_eof`.
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let empty = self.state.with_borrow_mut(py, |st| {
            if st.conn.closing {
                return None;
            }
            st.conn.closing = true;
            Some(st.write.buffer.is_empty())
        });
        if empty == Some(true) {
            common::remove_reader(self, py)?;
            common::schedule_connection_lost(self, py, py.None())?;
        }
        Ok(())
    }

    /// Mirrors `_UnixWritePipeTransport.close`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.write_eof(py)
    }

    /// Mirrors `_UnixWritePipeTransport.abort`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self._close(py, py.None())
    }

    /// Mirrors `_UnixWritePipeTransport._close`: drop what is buffered, stop watching,
    /// schedule `connection_lost(exc)`.
    fn _close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let had_buffer = self.state.with_borrow_mut(py, |st| {
            st.conn.closing = true;
            let had_buffer = !st.write.buffer.is_empty() || st.write.writer_installed;
            st.write.buffer.clear();
            had_buffer
        });
        if had_buffer {
            write_side::remove_writer(self, py)?;
        }
        common::remove_reader(self, py)?;
        common::schedule_connection_lost(self, py, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self
            .state
            .with_borrow_mut(py, |st| st.conn.replace_protocol(protocol));
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.peers(py).1
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        write_side::buffer_size(self, py)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        write_side::limits(self, py)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        write_side::set_write_buffer_limits(self, py, high, low)
    }

    /// `_call_connection_lost`'s Rust half: deliver `connection_lost(exc)` and let go of the
    /// protocol and the transport (the Python side closes the pipe).
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        common::connection_lost(self, py, &exc)
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.with_borrow(py, |st| st.conn.conn_lost.count())
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        write_side::protocol_paused(self, py)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.ends.event_loop)?;
        self.state
            .traverse(&visit, |st, visit| st.conn.visit(visit))
    }

    fn __clear__(&self, py: Python<'_>) {
        let released = self.state.with_borrow_mut(py, |st| st.conn.clear());
        drop(released);
    }
}
