//! `StreamCore`: the Rust half of a TCP or Unix stream transport — reading into
//! `data_received` / `BufferedProtocol.buffer_updated`, writing straight from the caller's
//! buffer and buffering only the unsent tail, vectored `writelines`, flow control, EOF and
//! closing, with the standard library's `_SelectorSocketTransport` semantics and messages.
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
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView, PyString};
use pyo3::PyTraverseError;

use crate::buffers::ByteView;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::gil_cell::GilCell;
use crate::sock_ops;
use crate::socket_io::{self, MAX_IOVECS};
use crate::socket_owner::SocketOwner;
use crate::support;
use crate::trace::IoKind;
use crate::write_buffer::WriteBuffer;

use super::common::{
    self, is_fatal_to_loop, ConnLost, FlowControl, LOG_THRESHOLD_FOR_CONNLOST_WRITES,
};

/// recv size for `data_received`, as the standard library's `max_size`.
pub const MAX_READ: usize = 256 * 1024;
/// A read at least this large makes the next one go straight into a right-sized `bytes`.
const LARGE_READ: usize = 32 * 1024;
/// ... of at most this size: larger allocations come from mmap on glibc, and their page faults
/// cost more than the copy they save.
const MAX_DIRECT_READ: usize = 128 * 1024;

struct StreamState {
    /// The Python transport object handed to the protocol; dropped once the connection is lost.
    transport: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    protocol_connected: bool,
    buffer: WriteBuffer,
    conn_lost: ConnLost,
    closing: bool,
    paused: bool,
    eof: bool,
    writer_installed: bool,
    flow: FlowControl,
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

fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let cls = BUFFERED.import(protocol.py(), "asyncio.protocols", "BufferedProtocol")?;
    protocol.is_instance(cls)
}

impl StreamCore {
    fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    /// `fd`, if the socket still owns it; EBADF (as `sock.send` would raise) otherwise.
    fn owned_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        self.sock.fd(py)
    }

    fn debug(&self, py: Python<'_>) -> bool {
        self.event_loop(py).get().debug_enabled()
    }

    fn transport(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .transport
            .as_ref()
            .map(|t| t.clone_ref(py))
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn is_reading_now(&self, py: Python<'_>) -> bool {
        let st = self.state.borrow(py);
        !st.closing && !st.paused
    }

    fn add_reader(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        common::watch(
            this.event_loop(py),
            this.fd,
            Direction::Read,
            slf.as_any(),
            intern!(py, "_read_ready"),
            this.context.as_ref(),
        )
    }

    fn add_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        common::watch(
            this.event_loop(py),
            this.fd,
            Direction::Write,
            slf.as_any(),
            intern!(py, "_write_ready"),
            this.context.as_ref(),
        )?;
        this.state.borrow_mut(py).writer_installed = true;
        Ok(())
    }

    fn remove_reader(&self, py: Python<'_>) -> PyResult<()> {
        common::unwatch(self.event_loop(py), self.fd, Direction::Read)
    }

    fn remove_writer(&self, py: Python<'_>) -> PyResult<()> {
        self.state.borrow_mut(py).writer_installed = false;
        common::unwatch(self.event_loop(py), self.fd, Direction::Write)
    }

    fn schedule_connection_lost(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        common::schedule_connection_lost(
            self.event_loop(py),
            self.transport(py),
            exc,
            self.context.as_ref(),
        )
    }

    fn report(&self, py: Python<'_>, message: &str, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        common::report(
            self.event_loop(py),
            message,
            exc,
            self.transport(py),
            self.protocol(py),
        )
    }

    /// `_fatal_error`: report (OS errors only in debug mode, as the stdlib) and force-close.
    fn fatal_error(&self, py: Python<'_>, err: PyErr, message: &str) -> PyResult<()> {
        if is_fatal_to_loop(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        let exc = exc.bind(py);
        if exc.is_instance_of::<PyOSError>() {
            if self.debug(py) {
                if let Some(transport) = self.transport(py) {
                    support::log_transport_error(transport.bind(py), message, exc)?;
                }
            }
        } else {
            self.report(py, message, exc)?;
        }
        self.force_close(py, exc.clone().unbind())
    }

    fn force_close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let (had_buffer, was_closing) = {
            let mut st = self.state.borrow_mut(py);
            if st.conn_lost.is_lost() {
                return Ok(());
            }
            let had_buffer = !st.buffer.is_empty() || st.writer_installed;
            st.buffer.clear();
            let was_closing = st.closing;
            st.closing = true;
            st.conn_lost.record();
            (had_buffer, was_closing)
        };
        if had_buffer {
            self.remove_writer(py)?;
        }
        if !was_closing {
            self.remove_reader(py)?;
        }
        self.schedule_connection_lost(py, exc)
    }

    fn close_impl(&self, py: Python<'_>) -> PyResult<()> {
        let empty = {
            let mut st = self.state.borrow_mut(py);
            if st.closing {
                return Ok(());
            }
            st.closing = true;
            let empty = st.buffer.is_empty();
            if empty {
                st.conn_lost.record();
            }
            empty
        };
        self.remove_reader(py)?;
        if empty {
            self.remove_writer(py)?;
            self.schedule_connection_lost(py, py.None())?;
        }
        Ok(())
    }

    fn notify_flow(
        &self,
        py: Python<'_>,
        method: &Bound<'_, PyString>,
        message: &str,
    ) -> PyResult<()> {
        common::notify_flow(
            self.event_loop(py),
            method,
            message,
            self.transport(py),
            self.protocol(py),
        )
    }

    /// Count (and, when tracing, record) an I/O event on this socket.
    #[inline]
    fn io_event(&self, py: Python<'_>, kind: IoKind, bytes: usize) {
        self.event_loop(py)
            .get()
            .instruments()
            .on_io(py, kind, self.fd, bytes);
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = self.state.borrow_mut(py);
            let size = st.buffer.len();
            if !st.flow.should_pause(size) {
                return Ok(());
            }
        }
        self.io_event(py, IoKind::PauseWriting, 0);
        self.notify_flow(
            py,
            intern!(py, "pause_writing"),
            "protocol.pause_writing() failed",
        )
    }

    fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut st = self.state.borrow_mut(py);
            let size = st.buffer.len();
            if !st.flow.should_resume(size) {
                return Ok(());
            }
        }
        self.io_event(py, IoKind::ResumeWriting, 0);
        self.notify_flow(
            py,
            intern!(py, "resume_writing"),
            "protocol.resume_writing() failed",
        )
    }

    /// Count a write to a lost connection; true if the write must be dropped.
    fn drop_write_if_lost(&self, py: Python<'_>) -> PyResult<bool> {
        let warn = {
            let mut st = self.state.borrow_mut(py);
            if !st.conn_lost.is_lost() {
                return Ok(false);
            }
            let warn = st.conn_lost.count() >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
            st.conn_lost.record();
            warn
        };
        if warn {
            support::log_warning(py, "socket.send() raised exception.")?;
        }
        Ok(true)
    }

    fn check_writable(&self, py: Python<'_>, what: &str) -> PyResult<()> {
        let st = self.state.borrow(py);
        if st.eof {
            return Err(PyRuntimeError::new_err(format!(
                "Cannot call {what}() after write_eof()"
            )));
        }
        if st.empty_waiter.is_some() {
            return Err(PyRuntimeError::new_err(format!(
                "unable to {what}; sendfile is in progress"
            )));
        }
        Ok(())
    }

    /// Send `views` now if nothing is queued, buffer what the socket did not take, and install
    /// the writer if data is left over. The buffer can be empty with the writer installed:
    /// a write from `resume_writing` inside `_write_ready`. It is sent at once then too, as
    /// the standard transport does (its check is the buffer alone).
    fn send_or_buffer(slf: &Bound<'_, Self>, views: &[ByteView]) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut sent = 0usize;
        let (send_now, needs_writer) = {
            let st = this.state.borrow(py);
            (
                st.buffer.is_empty(),
                st.buffer.is_empty() && !st.writer_installed,
            )
        };
        if send_now {
            let fd = match this.owned_fd(py) {
                Ok(fd) => fd,
                Err(err) => {
                    return this.fatal_error(py, err, "Fatal write error on socket transport")
                }
            };
            let (outcome, total) = if let [view] = views {
                (socket_io::send(fd, view.as_slice()), view.len())
            } else {
                let slices: Vec<&[u8]> = views.iter().map(ByteView::as_slice).collect();
                let total = slices.iter().map(|s| s.len()).sum();
                let batch = &slices[..slices.len().min(MAX_IOVECS)];
                (socket_io::send_vectored(fd, batch), total)
            };
            match outcome {
                Ok(Some(n)) => {
                    sent = n;
                    this.io_event(py, IoKind::Write, n);
                }
                Ok(None) => {}
                Err(err) => {
                    return this.fatal_error(
                        py,
                        os_error(err),
                        "Fatal write error on socket transport",
                    );
                }
            }
            if sent == total {
                return Ok(());
            }
        }
        // The watcher first, as the standard transport does: if epoll refuses it, write()
        // raises and nothing is buffered, rather than buffering data no watcher will send.
        if needs_writer {
            Self::add_writer(slf)?;
        }
        {
            let mut st = this.state.borrow_mut(py);
            let mut skip = sent;
            for view in views {
                let slice = view.as_slice();
                if skip >= slice.len() {
                    skip -= slice.len();
                    continue;
                }
                st.buffer.push(&slice[skip..]);
                skip = 0;
            }
        }
        this.maybe_pause_protocol(py)
    }

    fn on_eof(&self, py: Python<'_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.debug(py) {
            if let Some(transport) = self.transport(py) {
                support::log_transport_debug(transport.bind(py), "received EOF")?;
            }
        }
        let keep_open = match protocol.call_method0(intern!(py, "eof_received")) {
            Ok(v) => v.is_truthy()?,
            Err(err) => {
                return self.fatal_error(
                    py,
                    err,
                    "Fatal error: protocol.eof_received() call failed.",
                );
            }
        };
        if keep_open {
            self.remove_reader(py)
        } else {
            self.close_impl(py)
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
                return self.fatal_error(
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
            unsafe { socket_io::recv_raw(self.fd, ptr, len) }.map_err(os_error)
        });
        let nbytes = match received {
            Ok(None) => return Ok(()),
            Ok(Some(n)) => n,
            Err(err) => return self.fatal_error(py, err, "Fatal read error on socket transport"),
        };
        self.io_event(py, IoKind::Read, nbytes);
        if nbytes == 0 {
            return self.on_eof(py, protocol);
        }
        if let Err(err) = protocol.call_method1(intern!(py, "buffer_updated"), (nbytes,)) {
            return self.fatal_error(
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
        let queued = if self.large_reads.load(Relaxed) {
            socket_io::bytes_available(self.fd).filter(|&n| n >= LARGE_READ)
        } else {
            None
        };
        let received = if let Some(n) = queued {
            sock_ops::recv_bytes(py, self.fd, n.min(MAX_DIRECT_READ) as isize)
        } else {
            let event_loop = self.event_loop(py).get();
            let mut buf = event_loop.read_buffer(py);
            match socket_io::recv(self.fd, &mut buf[..]) {
                Ok(None) => Ok(None),
                Ok(Some(n)) => Ok(Some(PyBytes::new(py, &buf[..n]))),
                Err(err) => Err(os_error(err)),
            }
        };
        let data = match received {
            Ok(None) => return Ok(()),
            Ok(Some(data)) => data,
            Err(err) => {
                return self.fatal_error(py, err, "Fatal read error on socket transport");
            }
        };
        self.large_reads
            .store(data.as_bytes().len() >= LARGE_READ, Relaxed);
        self.io_event(py, IoKind::Read, data.as_bytes().len());
        if data.as_bytes().is_empty() {
            return self.on_eof(py, protocol);
        }
        if let Err(err) = protocol.call_method1(intern!(py, "data_received"), (data,)) {
            return self.fatal_error(
                py,
                err,
                "Fatal error: protocol.data_received() call failed.",
            );
        }
        Ok(())
    }
}

fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<()> {
    if !(data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>())
    {
        return Err(support::write_type_error(data));
    }
    Ok(())
}

impl StreamCore {
    /// `_write_ready`: send what the buffer holds, then drain bookkeeping (waiter, close, EOF).
    fn flush_buffer(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.borrow(py).conn_lost.is_lost() {
            return Ok(());
        }
        let outcome = self.owned_fd(py).and_then(|fd| {
            let st = self.state.borrow(py);
            socket_io::send_vectored(fd, &st.buffer.front_slices(64)).map_err(os_error)
        });
        match outcome {
            Err(err) => {
                let waiter = {
                    let mut st = self.state.borrow_mut(py);
                    st.buffer.clear();
                    st.empty_waiter.as_ref().map(|w| w.clone_ref(py))
                };
                self.remove_writer(py)?;
                let exc = err.clone_ref(py).into_value(py);
                self.fatal_error(py, err, "Fatal write error on socket transport")?;
                if let Some(waiter) = waiter {
                    waiter
                        .bind(py)
                        .call_method1(intern!(py, "set_exception"), (exc,))?;
                }
                return Ok(());
            }
            Ok(None) => {}
            Ok(Some(n)) => {
                self.io_event(py, IoKind::Write, n);
                self.state.borrow_mut(py).buffer.consume(n);
            }
        }
        self.maybe_resume_protocol(py)?; // may write more
        let (drained, waiter, closing, eof) = {
            let st = self.state.borrow(py);
            (
                st.buffer.is_empty(),
                st.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                st.closing,
                st.eof,
            )
        };
        if !drained {
            return Ok(());
        }
        self.remove_writer(py)?;
        if let Some(waiter) = waiter {
            waiter
                .bind(py)
                .call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        if closing {
            // gh-156512 (3.14+): the drained close counts the connection as lost first, so
            // connection_lost runs once and what the protocol writes from it is dropped;
            // earlier releases call it with the count still 0.
            if support::stdlib_counts_lost_on_drained_close(py)? {
                let mut st = self.state.borrow_mut(py);
                if st.conn_lost.is_lost() {
                    return Ok(());
                }
                st.conn_lost.record();
            }
            if let Some(transport) = self.transport(py) {
                transport
                    .bind(py)
                    .call_method1(intern!(py, "_call_connection_lost"), (py.None(),))?;
            }
        } else if eof {
            socket_io::shutdown_write(self.owned_fd(py)?).map_err(os_error)?;
        }
        Ok(())
    }
}

/// Whether the interpreter's socket transport has a `writelines` of its own (3.12+), which
/// returns at once for an empty (or any falsy) argument, `None` included; before, the base
/// class's joined the items first and so raised TypeError for `None`.
fn stdlib_writelines_skips_empty(py: Python<'_>) -> PyResult<bool> {
    static SKIPS: PyOnceLock<bool> = PyOnceLock::new();
    SKIPS
        .get_or_try_init(py, || -> PyResult<bool> {
            let cls = py
                .import("asyncio.selector_events")?
                .getattr("_SelectorSocketTransport")?;
            cls.getattr("__dict__")?.contains("writelines")
        })
        .copied()
}

#[pymethods]
impl StreamCore {
    #[new]
    #[pyo3(signature = (event_loop, fd, transport, protocol, sock, context=None))]
    fn new(
        py: Python<'_>,
        event_loop: Bound<'_, LoopCore>,
        fd: RawFd,
        transport: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        sock: Bound<'_, PyAny>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let buffered = is_buffered_protocol(&protocol)?;
        let _ = py;
        Ok(StreamCore {
            event_loop: event_loop.unbind(),
            fd,
            context: context.filter(|c| !c.is_none()).map(Bound::unbind),
            sock: SocketOwner::new(sock, fd)?,
            large_reads: AtomicBool::new(false),
            state: GilCell::new(StreamState {
                transport: Some(transport.unbind()),
                protocol: Some(protocol.unbind()),
                buffered,
                protocol_connected: true,
                buffer: WriteBuffer::new(),
                conn_lost: ConnLost::default(),
                closing: false,
                paused: false,
                eof: false,
                writer_installed: false,
                flow: FlowControl::default(),
                empty_waiter: None,
            }),
        })
    }

    /// Install the reader (scheduled by the transport right after `connection_made`).
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        if slf.get().is_reading_now(slf.py()) {
            Self::add_reader(slf)?;
        }
        Ok(())
    }

    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        let (protocol, buffered) = {
            let st = self.state.borrow(py);
            if st.conn_lost.is_lost() {
                return Ok(());
            }
            match &st.protocol {
                // Bound, not Py: released without a thread-local check, once per read.
                Some(p) => (p.bind(py).clone(), st.buffered),
                None => return Ok(()),
            }
        };
        if let Err(err) = self.owned_fd(py) {
            return self.fatal_error(py, err, "Fatal read error on socket transport");
        }
        if buffered {
            self.read_into_protocol_buffer(py, &protocol)
        } else {
            self.read_into_bytes(py, &protocol)
        }
    }

    fn _write_ready(&self, py: Python<'_>) -> PyResult<()> {
        self.flush_buffer(py)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        check_bytes_like(data)?;
        this.check_writable(py, "write")?;
        let view = match ByteView::new(data) {
            Ok(view) => view,
            // A memoryview that is not C-contiguous: the standard transport's `sock.send`
            // fails with BufferError, a fatal write error (a released one fails `not data`).
            Err(err) => {
                if data.len()? == 0 || this.drop_write_if_lost(py)? {
                    return Ok(());
                }
                return this.fatal_error(py, err, "Fatal write error on socket transport");
            }
        };
        if view.is_empty() || this.drop_write_if_lost(py)? {
            return Ok(());
        }
        Self::send_or_buffer(slf, std::slice::from_ref(&view))
    }

    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_writable(py, "writelines")?;
        // 3.12+'s own writelines returns for a falsy argument, then drops (and counts) the
        // call on a lost connection before looking at the items; 3.11's joined them first and
        // passed the result to write(), which ignores b"" before counting.
        let own_writelines = stdlib_writelines_skips_empty(py)?;
        if own_writelines && (!list_of_data.is_truthy()? || this.drop_write_if_lost(py)?) {
            return Ok(());
        }
        let mut views = Vec::new();
        for (i, item) in list_of_data.try_iter()?.enumerate() {
            let item = item?;
            let view = ByteView::new(&item).map_err(|_| {
                let name = item
                    .get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default();
                PyTypeError::new_err(format!(
                    "sequence item {i}: expected a bytes-like object, {name} found"
                ))
            })?;
            if !view.is_empty() {
                views.push(view);
            }
        }
        if own_writelines && !this.state.borrow(py).buffer.is_empty() {
            // 3.12+ appends to what is already buffered and tries to send it all now.
            {
                let mut st = this.state.borrow_mut(py);
                for view in &views {
                    st.buffer.push(view.as_slice());
                }
            }
            this.flush_buffer(py)?;
            let (pending, installed) = {
                let st = this.state.borrow(py);
                (!st.buffer.is_empty(), st.writer_installed)
            };
            if pending {
                if !installed {
                    Self::add_writer(slf)?;
                }
                this.maybe_pause_protocol(py)?;
            }
            return Ok(());
        }
        if views.is_empty() || (!own_writelines && this.drop_write_if_lost(py)?) {
            return Ok(());
        }
        Self::send_or_buffer(slf, &views)
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let empty = {
            let mut st = self.state.borrow_mut(py);
            if st.closing || st.eof {
                return Ok(());
            }
            st.eof = true;
            st.buffer.is_empty()
        };
        if empty {
            socket_io::shutdown_write(self.owned_fd(py)?).map_err(os_error)?;
        }
        Ok(())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.close_impl(py)
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.force_close(py, py.None())
    }

    /// `_force_close(exc)` for the transport's Python side (e.g. SSL and sendfile plumbing).
    fn _force_close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.force_close(py, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        self.is_reading_now(py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        if !self.is_reading_now(py) {
            return Ok(());
        }
        self.state.borrow_mut(py).paused = true;
        self.remove_reader(py)?;
        self.io_event(py, IoKind::PauseReading, 0);
        if self.debug(py) {
            if let Some(transport) = self.transport(py) {
                support::log_transport_debug(transport.bind(py), "pauses reading")?;
            }
        }
        Ok(())
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut st = this.state.borrow_mut(py);
            if st.closing || !st.paused {
                return Ok(());
            }
            st.paused = false;
        }
        Self::add_reader(slf)?;
        this.io_event(py, IoKind::ResumeReading, 0);
        if this.debug(py) {
            if let Some(transport) = this.transport(py) {
                support::log_transport_debug(transport.bind(py), "resumes reading")?;
            }
        }
        Ok(())
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = is_buffered_protocol(&protocol)?;
        let old = {
            let mut st = self.state.borrow_mut(py);
            st.buffered = buffered;
            st.protocol_connected = true;
            st.protocol.replace(protocol.unbind())
        };
        drop(old);
        Ok(())
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
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

    /// Deliver `connection_lost(exc)` to the protocol (if one is connected) and let go of it
    /// and of the transport; the Python side then closes the socket.
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let protocol = {
            let st = self.state.borrow(py);
            if st.protocol_connected {
                st.protocol.as_ref().map(|p| p.clone_ref(py))
            } else {
                None
            }
        };
        let result = common::deliver_connection_lost(protocol, &exc);
        let (released, waiter) = {
            let mut st = self.state.borrow_mut(py);
            st.conn_lost.mark();
            st.closing = true;
            let released = (st.protocol.take(), st.transport.take());
            (released, st.empty_waiter.take())
        };
        drop(released);
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
            let old = self.state.borrow_mut(py).empty_waiter.take();
            drop(old);
            return Ok(());
        };
        let empty = {
            let mut st = self.state.borrow_mut(py);
            if st.empty_waiter.is_some() {
                return Err(PyRuntimeError::new_err("Empty waiter is already set"));
            }
            st.empty_waiter = Some(future.clone().unbind());
            st.buffer.is_empty()
        };
        if empty {
            future.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(())
    }

    #[getter]
    fn _empty_waiter(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .borrow(py)
            .empty_waiter
            .as_ref()
            .map(|w| w.clone_ref(py))
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.borrow(py).conn_lost.count()
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).closing
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).paused
    }

    #[getter]
    fn _eof(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).eof
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).flow.paused()
    }

    #[getter]
    fn _protocol_connected(&self, py: Python<'_>) -> bool {
        self.state.borrow(py).protocol_connected
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.context)?;
        self.sock.traverse(&visit)?;
        if let Some(st) = self.state.try_borrow_unchecked() {
            visit.call(&st.transport)?;
            visit.call(&st.protocol)?;
            visit.call(&st.empty_waiter)?;
        }
        Ok(())
    }
}
