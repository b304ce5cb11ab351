//! `StreamCore`: the Rust half of a TCP or Unix stream transport — reading into
//! `data_received` / `BufferedProtocol.buffer_updated`, EOF, `write_eof`, sendfile's empty
//! waiter, with the standard library's `_SelectorSocketTransport` semantics and messages. The
//! write side (send or buffer, `writelines`, flow control) is `write_side.rs`, the close path
//! `common.rs`; this file says how a socket differs.
//!
//! Runs on the loop thread with the GIL held. The socket's reader and writer are ordinary
//! loop watchers whose callbacks are this object's `_read_ready` / `_write_ready`. State sits
//! in a `GilCell`; every path takes what it needs out of it and releases the borrow before
//! calling the protocol, which may re-enter the transport (write from data_received, close
//! from connection_lost, ...).

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use pyo3::exceptions::{PyConnectionError, PyOSError, PyRuntimeError, PyTypeError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;
use pyo3::PyTraverseError;

use crate::buffers::ByteView;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::sock_ops;
use crate::socket_owner::SocketOwner;
use crate::support;
use crate::sys::nonblocking;
use crate::trace::IoKind;

use super::common::{self, Connection, TransportCore};
use super::stream_feed;
use super::write_side::{self, Flushed, WriteCore, WriteSide};

/// A read at least this large makes the next one go straight into a right-sized `bytes`.
const LARGE_READ: usize = 32 * 1024;
/// ... of at most this size: larger allocations come from mmap on glibc, and their page faults
/// cost more than the copy they save.
const MAX_DIRECT_READ: usize = 128 * 1024;

struct StreamState {
    conn: Connection,
    write: WriteSide,
    read_path: ReadPath,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct StreamCore {
    event_loop: Py<LoopCore>,
    fd: RawFd,
    /// The `contextvars.Context` every protocol callback runs in (3.15's `context=`; one per
    /// connection), or `None`: a copy of the context current where each is scheduled.
    context: Option<Py<PyAny>>,
    /// The transport's socket: every syscall first checks that it still owns `fd` (an
    /// application may close the socket it passed as `sock=`, and the number be reused).
    sock: SocketOwner,
    /// The last read was large (see `read_into_bytes`).
    large_reads: AtomicBool,
    state: GilCell<StreamState>,
}

/// Where a read goes: `_read_ready__get_buffer`, `_read_ready__data_received`, or the latter
/// done by the transport for the standard library's stream reader (`stream_feed.rs`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReadPath {
    ProtocolBuffer,
    DataReceived,
    StdlibStreamReader,
}

impl ReadPath {
    fn of(protocol: &Bound<'_, PyAny>) -> PyResult<Self> {
        static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let cls = BUFFERED.import(protocol.py(), "asyncio.protocols", "BufferedProtocol")?;
        Ok(if protocol.is_instance(cls)? {
            ReadPath::ProtocolBuffer
        } else if stream_feed::feeds_stdlib_reader(protocol)? {
            ReadPath::StdlibStreamReader
        } else {
            ReadPath::DataReceived
        })
    }
}

const WRITE_ERROR: &str = "Fatal write error on socket transport";
const READ_ERROR: &str = "Fatal read error on socket transport";
const DATA_RECEIVED_FAILED: &str = "Fatal error: protocol.data_received() call failed.";

impl TransportCore for StreamCore {
    fn is_quiet_error(exc: &Bound<'_, PyAny>) -> bool {
        exc.is_instance_of::<PyOSError>()
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    fn fd(&self) -> RawFd {
        self.fd
    }

    fn context(&self) -> Option<&Py<PyAny>> {
        self.context.as_ref()
    }

    fn with_connection<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Connection) -> R) -> R {
        self.state.with_borrow_mut(py, |st| f(&mut st.conn))
    }

    fn close_after_error(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self._force_close(py, exc)
    }

    fn record_flow(&self, py: Python<'_>, kind: IoKind) {
        self.io_event(py, kind, 0);
    }
}

impl WriteCore for StreamCore {
    const WRITE_ERROR: &'static str = WRITE_ERROR;
    const LOST_WRITE_WARNING: &'static str = "socket.send() raised exception.";
    const CLOSING_DROPS_WRITES: bool = false;
    const RESUMES_WHILE_DRAINING: bool = true;

    fn with_write_side<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Connection, &mut WriteSide) -> R,
    ) -> R {
        self.state
            .with_borrow_mut(py, |st| f(&mut st.conn, &mut st.write))
    }

    fn check_data_type(data: &Bound<'_, PyAny>) -> PyResult<()> {
        if write_side::is_bytes_like(data) {
            return Ok(());
        }
        Err(support::write_type_error(data))
    }

    fn check_writable(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        let (eof, sendfile) = self
            .state
            .with_borrow(py, |st| (st.eof, st.empty_waiter.is_some()));
        if eof {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {what}() after write_eof()"
            )));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {what}; sendfile is in progress"
            )));
        }
        Ok(())
    }

    /// 3.12+'s `_SelectorSocketTransport.writelines`.
    fn stdlib_has_own_writelines(py: Python<'_>) -> PyResult<bool> {
        static OWN: PyOnceLock<bool> = PyOnceLock::new();
        write_side::cached_stdlib_defines(
            &OWN,
            py,
            (
                "asyncio.selector_events",
                "_SelectorSocketTransport",
                "writelines",
            ),
        )
    }

    /// `fd`, if the socket still owns it; EBADF (as `sock.send` would raise) otherwise.
    fn writable_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        self.sock.fd(py)
    }

    fn write_fd(fd: RawFd, slices: &[&[u8]]) -> std::io::Result<Option<usize>> {
        nonblocking::send_vectored(fd, slices)
    }

    fn wrote(&self, py: Python<'_>, n: usize) {
        self.io_event(py, IoKind::Write, n);
    }

    fn write_failed(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        common::fatal_error(self, py, err, WRITE_ERROR)
    }

    /// Mirrors `_SelectorSocketTransport._write_ready` (then the drain's bookkeeping:
    /// sendfile's waiter, the deferred close, the deferred EOF).
    fn flush_buffer(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.with_borrow(py, |st| st.conn.conn_lost.is_lost()) {
            return Ok(());
        }
        match write_side::flush(self, py)? {
            Flushed::Pending => Ok(()),
            Flushed::Failed(err) => {
                let exc = err.clone_ref(py).into_value(py);
                common::fatal_error(self, py, err, WRITE_ERROR)?;
                if let Some(waiter) = self.empty_waiter(py) {
                    waiter
                        .bind(py)
                        .call_method1(intern!(py, "set_exception"), (exc,))?;
                }
                Ok(())
            }
            Flushed::Drained => {
                if let Some(waiter) = self.empty_waiter(py) {
                    waiter
                        .bind(py)
                        .call_method1(intern!(py, "set_result"), (py.None(),))?;
                }
                let (closing, eof) = self.state.with_borrow(py, |st| (st.conn.closing, st.eof));
                if closing {
                    // gh-156512 (3.14+): the drained close counts the connection as lost
                    // first, so connection_lost runs once and what the protocol writes from it
                    // is dropped; earlier releases call it with the count still 0.
                    if support::stdlib_counts_lost_on_drained_close(py)?
                        && self.state.with_borrow_mut(py, |st| {
                            let lost = st.conn.conn_lost.is_lost();
                            if !lost {
                                st.conn.conn_lost.record();
                            }
                            lost
                        })
                    {
                        return Ok(());
                    }
                    common::call_connection_lost(self, py)
                } else if eof {
                    nonblocking::shutdown_write(self.writable_fd(py)?).map_err(os_error)
                } else {
                    Ok(())
                }
            }
        }
    }
}

impl StreamCore {
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .with_borrow(py, |st| st.conn.protocol.as_ref().map(|p| p.clone_ref(py)))
    }

    fn empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .with_borrow(py, |st| st.empty_waiter.as_ref().map(|w| w.clone_ref(py)))
    }

    /// Count (and, when tracing, record) an I/O event on this socket.
    #[inline]
    fn io_event(&self, py: Python<'_>, kind: IoKind, bytes: usize) {
        self.event_loop
            .get()
            .instruments()
            .on_io(py, kind, self.fd, bytes);
    }

    fn on_eof(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        self.log_debug(py, "received EOF")?;
        let keep_open = match protocol.call_method0(intern!(py, "eof_received")) {
            Ok(v) => v.is_truthy()?,
            Err(err) => {
                return common::fatal_error(
                    self,
                    py,
                    err,
                    "Fatal error: protocol.eof_received() call failed.",
                );
            }
        };
        if keep_open {
            common::remove_reader(self, py)
        } else {
            self.close(py)
        }
    }

    fn read_into_protocol_buffer(
        &self,
        py: Python<'_>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let buffer = match protocol
            .call_method1(intern!(py, "get_buffer"), (-1,))
            .and_then(|buf| {
                if buf.len()? == 0 {
                    Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ))
                } else {
                    Ok(buf)
                }
            }) {
            Ok(buf) => buf,
            Err(err) => {
                return common::fatal_error(
                    self,
                    py,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                );
            }
        };
        let received = ByteView::new(&buffer).and_then(|mut view| {
            let len = view.len();
            let ptr = view.as_mut_ptr().ok_or_else(|| {
                PyTypeError::new_err(
                    "recv_into() argument 'buffer' must be read-write bytes-like object",
                )
            })?;
            // SAFETY: `ptr` addresses the `len` writable bytes of the exporter's buffer, which
            // `view` keeps alive (and pinned) until it is dropped after the call.
            unsafe { nonblocking::recv_raw(self.fd, ptr, len) }.map_err(os_error)
        });
        let nbytes = match received {
            Ok(None) => return Ok(()),
            Ok(Some(n)) => n,
            Err(err) => return common::fatal_error(self, py, err, READ_ERROR),
        };
        self.io_event(py, IoKind::Read, nbytes);
        if nbytes == 0 {
            return self.on_eof(py, protocol);
        }
        if let Err(err) = protocol.call_method1(intern!(py, "buffer_updated"), (nbytes,)) {
            return common::fatal_error(
                self,
                py,
                err,
                "Fatal error: protocol.buffer_updated() call failed.",
            );
        }
        Ok(())
    }

    fn read_into_bytes(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        // After a large read, receive straight into a bytes sized to what is queued: for big
        // messages that saves copying them out of the scratch buffer, for an ioctl.
        let received = if let Some(n) = self.large_read_queued() {
            sock_ops::recv_bytes(py, self.fd, n as isize)
        } else {
            self.event_loop(py).get().with_read_buffer(py, |buf| {
                nonblocking::recv(self.fd, buf)
                    .map(|n| n.map(|n| PyBytes::new(py, &buf[..n])))
                    .map_err(os_error)
            })
        };
        let data = match received {
            Ok(None) => return Ok(()),
            Ok(Some(data)) => data,
            Err(err) => {
                return common::fatal_error(self, py, err, READ_ERROR);
            }
        };
        self.large_reads
            .store(data.as_bytes().len() >= LARGE_READ, Relaxed);
        self.io_event(py, IoKind::Read, data.as_bytes().len());
        if data.as_bytes().is_empty() {
            return self.on_eof(py, protocol);
        }
        if let Err(err) = protocol.call_method1(intern!(py, "data_received"), (data,)) {
            return common::fatal_error(self, py, err, DATA_RECEIVED_FAILED);
        }
        Ok(())
    }
}

impl StreamCore {
    /// Bytes queued on the socket when the last read was large and at least `LARGE_READ` are
    /// waiting (worth receiving straight into their destination, for an ioctl), else `None`.
    fn large_read_queued(&self) -> Option<usize> {
        if self.large_reads.load(Relaxed) {
            nonblocking::bytes_available(self.fd)
                .filter(|&n| n >= LARGE_READ)
                .map(|n| n.min(MAX_DIRECT_READ))
        } else {
            None
        }
    }

    /// `_read_ready__data_received` for an `asyncio.StreamReaderProtocol` whose reader the
    /// transport feeds itself (`stream_feed.rs`); through `data_received` when it may not.
    fn read_into_stream_reader(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let Some((reader, buffer)) = stream_feed::reader_to_feed(protocol) else {
            return self.read_into_bytes(py, protocol);
        };
        // (bytes received, whether they went into the buffer): a bytearray that cannot grow
        // fails as `bytearray.extend` in `data_received` would, after the read.
        let direct = self
            .large_read_queued()
            .and_then(|queued| stream_feed::recv_into_end(&buffer, self.fd, queued));
        let received = if let Some(direct) = direct {
            direct.map(|n| n.map(|n| (n, Ok(()))))
        } else {
            self.event_loop(py).get().with_read_buffer(py, |buf| {
                let n = nonblocking::recv(self.fd, buf).map_err(os_error)?;
                Ok(n.map(|n| (n, stream_feed::append(&buffer, &buf[..n]))))
            })
        };
        let (nbytes, appended) = match received {
            Ok(None) => return Ok(()),
            Ok(Some(read)) => read,
            Err(err) => return common::fatal_error(self, py, err, READ_ERROR),
        };
        self.large_reads.store(nbytes >= LARGE_READ, Relaxed);
        self.io_event(py, IoKind::Read, nbytes);
        if nbytes == 0 {
            return self.on_eof(py, protocol);
        }
        if let Err(err) = appended {
            return common::fatal_error(self, py, err, DATA_RECEIVED_FAILED);
        }
        if let Err(err) = stream_feed::after_feed(&reader) {
            return common::fatal_error(self, py, err, DATA_RECEIVED_FAILED);
        }
        Ok(())
    }
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (event_loop, fd, transport, protocol, sock, context=None))]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        fd: RawFd,
        transport: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        sock: Bound<'_, PyAny>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let read_path = ReadPath::of(&protocol)?;
        Ok(StreamCore {
            event_loop: event_loop.unbind(),
            fd,
            context: context.filter(|c| !c.is_none()).map(Bound::unbind),
            sock: SocketOwner::new(sock, fd)?,
            large_reads: AtomicBool::new(false),
            state: GilCell::new(StreamState {
                conn: Connection::new(transport, protocol),
                write: WriteSide::default(),
                read_path,
                eof: false,
                empty_waiter: None,
            }),
        })
    }

    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::start_reading(slf)
    }

    /// Mirrors `_SelectorSocketTransport._read_ready` (`_read_ready__get_buffer` for a
    /// `BufferedProtocol`, `_read_ready__data_received` otherwise).
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let reading = self.state.with_borrow(py, |st| {
            if st.conn.conn_lost.is_lost() {
                return None;
            }
            // Bound, not Py: released without a thread-local check, once per read.
            let protocol = st.conn.protocol.as_ref()?.bind(py).clone();
            Some((protocol, st.read_path))
        });
        let Some((protocol, read_path)) = reading else {
            return Ok(());
        };
        if let Err(err) = self.sock.fd(py) {
            return common::fatal_error(self, py, err, READ_ERROR);
        }
        match read_path {
            ReadPath::ProtocolBuffer => self.read_into_protocol_buffer(py, &protocol),
            ReadPath::StdlibStreamReader => self.read_into_stream_reader(py, &protocol),
            ReadPath::DataReceived => self.read_into_bytes(py, &protocol),
        }
    }

    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        self.flush_buffer(py)
    }

    /// Mirrors `_SelectorSocketTransport.write`.
    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        write_side::write(slf, data)
    }

    /// Mirrors `_SelectorSocketTransport.writelines` (3.12+; `WriteTransport.writelines`
    /// before).
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        write_side::writelines(slf, list_of_data)
    }

    /// Mirrors `_SelectorSocketTransport.write_eof`.
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let empty = self.state.with_borrow_mut(py, |st| {
            if st.conn.closing || st.eof {
                return None;
            }
            st.eof = true;
            Some(st.write.buffer.is_empty())
        });
        if empty == Some(true) {
            nonblocking::shutdown_write(self.writable_fd(py)?).map_err(os_error)?;
        }
        Ok(())
    }

    /// Mirrors `_SelectorTransport.close`: stop reading; `connection_lost` once the buffer is
    /// flushed (now, if it is empty).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let empty = self.state.with_borrow_mut(py, |st| {
            if st.conn.closing {
                return None;
            }
            st.conn.closing = true;
            let empty = st.write.buffer.is_empty();
            if empty {
                st.conn.conn_lost.record();
            }
            Some(empty)
        });
        let Some(empty) = empty else {
            return Ok(());
        };
        common::remove_reader(self, py)?;
        if empty {
            write_side::remove_writer(self, py)?;
            common::schedule_connection_lost(self, py, py.None())?;
        }
        Ok(())
    }

    /// Mirrors `_SelectorTransport.abort`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self._force_close(py, py.None())
    }

    /// Mirrors `_SelectorTransport._force_close`: drop what is buffered, stop watching, and
    /// schedule `connection_lost(exc)`, once.
    fn _force_close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let closed = self.state.with_borrow_mut(py, |st| {
            if st.conn.conn_lost.is_lost() {
                return None;
            }
            let had_buffer = !st.write.buffer.is_empty() || st.write.writer_installed;
            st.write.buffer.clear();
            let was_closing = st.conn.closing;
            st.conn.closing = true;
            st.conn.conn_lost.record();
            Some((had_buffer, was_closing))
        });
        let Some((had_buffer, was_closing)) = closed else {
            return Ok(());
        };
        if had_buffer {
            write_side::remove_writer(self, py)?;
        }
        if !was_closing {
            common::remove_reader(self, py)?;
        }
        common::schedule_connection_lost(self, py, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        common::is_reading(self, py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        common::pause_reading(self, py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::resume_reading(slf)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let read_path = ReadPath::of(&protocol)?;
        let old = self.state.with_borrow_mut(py, |st| {
            st.read_path = read_path;
            st.conn.replace_protocol(protocol)
        });
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
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

    /// Mirrors `_SelectorTransport._call_connection_lost` but for closing the socket (the
    /// Python side's): deliver `connection_lost(exc)`, let go of the protocol and the
    /// transport, and fail sendfile's waiter.
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let result = common::connection_lost(self, py, &exc);
        let waiter = self.state.with_borrow_mut(py, |st| st.empty_waiter.take());
        if let Some(waiter) = waiter {
            let err = PyConnectionError::new_err("Connection is closed by peer");
            waiter
                .bind(py)
                .call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
        }
        result
    }

    /// `_make_empty_waiter` / `_reset_empty_waiter` (sendfile): `future` resolves once the
    /// write buffer is empty; None clears it.
    fn _set_empty_waiter(&self, py: Python<'_>, future: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let Some(future) = future.filter(|f| !f.is_none()) else {
            let old = self.state.with_borrow_mut(py, |st| st.empty_waiter.take());
            drop(old);
            return Ok(());
        };
        let empty = self.state.with_borrow_mut(py, |st| {
            if st.empty_waiter.is_some() {
                return None;
            }
            st.empty_waiter = Some(future.clone().unbind());
            Some(st.write.buffer.is_empty())
        });
        match empty {
            None => Err(PyRuntimeError::new_err("Empty waiter is already set")),
            Some(true) => future
                .call_method1(intern!(py, "set_result"), (py.None(),))
                .map(drop),
            Some(false) => Ok(()),
        }
    }

    #[getter]
    fn _empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.empty_waiter(py)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.with_borrow(py, |st| st.conn.conn_lost.count())
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.closing)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.paused)
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.eof)
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        write_side::protocol_paused(self, py)
    }

    #[getter]
    fn _protocol_connected(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.protocol_connected)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.context)?;
        self.sock.traverse(&visit)?;
        self.state.traverse(&visit, |st, visit| {
            st.conn.visit(visit)?;
            visit.call(&st.empty_waiter)
        })
    }

    fn __clear__(&self, py: Python<'_>) {
        let released = self
            .state
            .with_borrow_mut(py, |st| (st.conn.clear(), st.empty_waiter.take()));
        drop(released);
    }
}
