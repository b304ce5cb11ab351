//! The `sock_*` operations: `sock_recv`, `sock_recv_into`, `sock_recvfrom`,
//! `sock_recvfrom_into`, `sock_sendall`, `sock_sendto`, `sock_accept` and `sock_connect`.
//! Each first tries its call at once (`start`); only when the socket would block does it become
//! a `SockWaiter`, installed as the fd's reader or writer, that retries on every readiness
//! event and settles the operation's future.
//!
//! The same state machines as `BaseSelectorEventLoop`'s (3.11 through 3.15): the checks
//! (`_check_ssl_socket`, the debug-mode "must be non-blocking" ValueError), then one attempt;
//! "would block" (BlockingIOError, InterruptedError) waits, any other error is raised, or set on
//! the future. A future that is done (cancelled) before the event comes makes the waiter remove
//! itself without acting, and the coroutine that awaited it calls `finish()` however it ended,
//! which removes a watcher still installed (the standard loop's `_sock_read_done`/
//! `_sock_write_done`, run from the coroutine instead of a done callback: one callback less per
//! wait). `sock_recv` reads into a `bytes` of the right size and `sock_sendall` sends from the
//! caller's buffer, both with Rust syscalls (`sock_ops.rs`); `sock_connect` reads `SO_ERROR`
//! itself; the others call the socket's own method, so argument checks and address conversions
//! are the socket module's. A finished reader parks its registration for the socket's next
//! operation (see `fd_watchers`): a request/response loop makes no `epoll_ctl` per round trip.
//!
//! Loop thread, GIL held.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::PyTraverseError;

use crate::buffers::ByteView;
use crate::errors::{is_fatal_to_loop, os_error};
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::gil_cell::GilCell;
use crate::socket_owner::{read_sock_fd, SocketOwner};
use crate::sys::nonblocking;
use crate::trace::IoKind;

/// The caller's data for a `sock_sendall` that has to wait, exported (and so locked against
/// resizing, as the standard loop's `memoryview(data)` locks it) until the waiter is freed.
pub struct HeldBuffer(ByteView);

// SAFETY: the export is only read, released or dropped by a thread holding the GIL (the waiter
// is a Python object reached only through Python); a buffer export is not tied to the thread
// that made it.
unsafe impl Send for HeldBuffer {}
// SAFETY: as above; shared access happens only under the GIL, which serialises it.
unsafe impl Sync for HeldBuffer {}

/// One `sock_*` operation and what it needs to retry.
pub enum SockOp {
    Recv {
        n: isize,
    },
    SendAll {
        data: HeldBuffer,
        /// Bytes of `data` the socket has taken so far.
        sent: AtomicUsize,
    },
    SendTo {
        data: Py<PyAny>,
        address: Py<PyAny>,
    },
    RecvInto {
        buf: Py<PyAny>,
    },
    RecvFrom {
        size: Py<PyAny>,
    },
    RecvFromInto {
        buf: Py<PyAny>,
        nbytes: Py<PyAny>,
    },
    Accept,
    Connect {
        address: Py<PyAny>,
    },
}

/// What one attempt gave: the operation's result, or "would block, try again".
type Attempt = PyResult<Option<Py<PyAny>>>;

impl SockOp {
    pub fn send_all(data: &Bound<'_, PyAny>) -> PyResult<SockOp> {
        Ok(SockOp::SendAll {
            data: HeldBuffer(ByteView::new(data)?),
            sent: AtomicUsize::new(0),
        })
    }

    /// `nbytes` 0 (the default) means all of `buf`, as with the standard loop.
    pub fn recv_from_into(buf: &Bound<'_, PyAny>, nbytes: &Bound<'_, PyAny>) -> PyResult<SockOp> {
        let nbytes = if nbytes.is_truthy()? {
            nbytes.clone()
        } else {
            buf.len()?.into_pyobject(buf.py())?.into_any()
        };
        Ok(SockOp::RecvFromInto {
            buf: buf.clone().unbind(),
            nbytes: nbytes.unbind(),
        })
    }

    fn direction(&self) -> Direction {
        match self {
            SockOp::SendAll { .. } | SockOp::SendTo { .. } | SockOp::Connect { .. } => {
                Direction::Write
            }
            _ => Direction::Read,
        }
    }

    /// One try. `first`: the call `sock_*` makes itself, before any waiting (`sock_sendto` and
    /// `sock_connect` make a different call from their callbacks, as the standard loop's do).
    fn attempt(
        &self,
        event_loop: &LoopCore,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        first: bool,
    ) -> Attempt {
        let py = sock.py();
        let counted = |n: usize, kind: IoKind| event_loop.count_io(py, kind, fd, n);
        match self {
            SockOp::Recv { n } => Ok(event_loop
                .sock_recv_bytes(py, fd, *n)?
                .map(|data| data.into_any().unbind())),
            SockOp::SendAll { data, sent } => {
                let start = sent.load(Relaxed);
                let rest = &data.0.as_slice()[start..];
                let Some(n) = nonblocking::send(fd, rest).map_err(os_error)? else {
                    return Ok(None);
                };
                counted(n, IoKind::Write);
                sent.store(start + n, Relaxed);
                Ok((n == rest.len()).then(|| py.None()))
            }
            SockOp::SendTo { data, address } => {
                let sent = if first {
                    call_unless_blocked(sock, intern!(py, "sendto"), (data, address))?
                } else {
                    call_unless_blocked(sock, intern!(py, "sendto"), (data, 0, address))?
                };
                count_result(sent, |r| r.extract(), IoKind::Write, counted)
            }
            SockOp::RecvInto { buf } => {
                let received = call_unless_blocked(sock, intern!(py, "recv_into"), (buf,))?;
                count_result(received, |r| r.extract(), IoKind::Read, counted)
            }
            SockOp::RecvFrom { size } => {
                let received = call_unless_blocked(sock, intern!(py, "recvfrom"), (size,))?;
                count_result(received, |r| r.get_item(0)?.len(), IoKind::Read, counted)
            }
            SockOp::RecvFromInto { buf, nbytes } => {
                let received =
                    call_unless_blocked(sock, intern!(py, "recvfrom_into"), (buf, nbytes))?;
                count_result(
                    received,
                    |r| r.get_item(0)?.extract(),
                    IoKind::Read,
                    counted,
                )
            }
            SockOp::Accept => {
                let Some(accepted) = call_unless_blocked(sock, intern!(py, "accept"), ())? else {
                    return Ok(None);
                };
                accepted
                    .get_item(0)?
                    .call_method1(intern!(py, "setblocking"), (false,))?;
                Ok(Some(accepted.unbind()))
            }
            SockOp::Connect { address } if first => {
                Ok(
                    call_unless_blocked(sock, intern!(py, "connect"), (address,))?
                        .map(|_| py.None()),
                )
            }
            SockOp::Connect { address } => connect_outcome(py, fd, address.bind(py)),
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            SockOp::Recv { .. } | SockOp::SendAll { .. } | SockOp::Accept => Ok(()),
            SockOp::SendTo { data, address } => {
                visit.call(data)?;
                visit.call(address)
            }
            SockOp::RecvInto { buf } => visit.call(buf),
            SockOp::RecvFrom { size } => visit.call(size),
            SockOp::RecvFromInto { buf, nbytes } => {
                visit.call(buf)?;
                visit.call(nbytes)
            }
            SockOp::Connect { address } => visit.call(address),
        }
    }
}

/// `sock.method(*args)`, with "would block" (BlockingIOError, InterruptedError) as `None`.
fn call_unless_blocked<'py>(
    sock: &Bound<'py, PyAny>,
    method: &Bound<'py, pyo3::types::PyString>,
    args: impl pyo3::call::PyCallArgs<'py>,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = sock.py();
    match sock.call_method1(method, args) {
        Ok(result) => Ok(Some(result)),
        Err(err)
            if err.is_instance_of::<PyBlockingIOError>(py)
                || err.is_instance_of::<PyInterruptedError>(py) =>
        {
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Count the bytes a socket method's result says it moved, and pass the result on.
fn count_result(
    result: Option<Bound<'_, PyAny>>,
    nbytes: impl FnOnce(&Bound<'_, PyAny>) -> PyResult<usize>,
    kind: IoKind,
    counted: impl FnOnce(usize, IoKind),
) -> Attempt {
    let Some(result) = result else {
        return Ok(None);
    };
    counted(nbytes(&result)?, kind);
    Ok(Some(result.unbind()))
}

/// A non-blocking connect's outcome once the socket is writable: `SO_ERROR`, raised as the
/// standard loop's `_sock_connect_cb` raises it.
fn connect_outcome(py: Python<'_>, fd: RawFd, address: &Bound<'_, PyAny>) -> Attempt {
    let err = nonblocking::socket_error(fd).map_err(os_error)?;
    if err == 0 {
        return Ok(Some(py.None()));
    }
    // The errnos `OSError(err)` makes a BlockingIOError or InterruptedError of, which the
    // standard loop's callback catches: still connecting, stay installed.
    if matches!(
        err,
        libc::EAGAIN | libc::EALREADY | libc::EINPROGRESS | libc::EINTR
    ) {
        return Ok(None);
    }
    Err(PyOSError::new_err((
        err,
        format!("Connect call failed {}", address.str()?),
    )))
}

/// Whether the loop's `_transports` (a `WeakValueDictionary`) may hold a transport: read from
/// the dict behind it, without the Python-level `__len__` (dead entries not yet purged only make
/// the caller check the fd with `_ensure_fd_no_transport`, as the standard loop always does).
fn may_have_transports(event_loop: &Bound<'_, LoopCore>) -> PyResult<bool> {
    let py = event_loop.py();
    let transports = event_loop.getattr(intern!(py, "_transports"))?;
    match transports.getattr_opt(intern!(py, "data"))? {
        Some(data) if data.is_exact_instance_of::<pyo3::types::PyDict>() => data.is_truthy(),
        _ => transports.is_truthy(),
    }
}

/// The checks every `sock_*` method makes before acting (the standard loop's order), and the
/// socket's fd.
pub fn checked_fd(event_loop: &LoopCore, sock: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static CHECK_SSL_SOCKET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = sock.py();
    let plain = sock
        .get_type()
        .is(SOCKET_TYPE.import(py, "socket", "socket")?);
    // A plain socket.socket is never an ssl.SSLSocket: skip the call.
    if !plain {
        CHECK_SSL_SOCKET
            .import(py, "asyncio.base_events", "_check_ssl_socket")?
            .call1((sock,))?;
    }
    if event_loop.debug_enabled() && sock.call_method0(intern!(py, "gettimeout"))?.ne(0)? {
        return Err(PyValueError::new_err("the socket must be non-blocking"));
    }
    if plain {
        // SAFETY: a socket.socket is a `_socket.socket`, alive while `sock` is borrowed; its
        // `fileno()` is that C method, which returns this field.
        return Ok(unsafe { read_sock_fd(sock.as_ptr()) });
    }
    sock.call_method0(intern!(py, "fileno"))?.extract()
}

/// Start the operation `make_op` describes on `sock`: its result if the first try finished it
/// (or its error), else a `SockWaiter` (not yet installed) for the caller to `wait()` on. The
/// operation's own arguments are converted after the socket's checks, so a blocking socket is
/// refused before a bad argument is, as with the standard loop.
pub fn start(
    event_loop: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    make_op: impl FnOnce() -> PyResult<SockOp>,
) -> PyResult<Py<PyAny>> {
    let py = sock.py();
    let fd = checked_fd(event_loop.get(), sock)?;
    let op = make_op()?;
    if let Some(result) = op.attempt(event_loop.get(), sock, fd, true)? {
        return Ok(result);
    }
    let waiter = SockWaiter {
        event_loop: event_loop.clone().unbind(),
        sock: SocketOwner::new(sock.clone(), fd)?,
        op,
        future: GilCell::new(None),
    };
    Ok(Bound::new(py, waiter)?.into_any().unbind())
}

/// A `sock_*` operation that has to wait: the fd's reader or writer callback, which retries the
/// operation on each event and settles the future `wait()` made.
#[pyclass(module = "ferroloop._core", frozen)]
pub struct SockWaiter {
    event_loop: Py<LoopCore>,
    /// The socket the caller passed: retries act on it only while it still owns `fd`.
    sock: SocketOwner,
    op: SockOp,
    future: GilCell<Option<Py<PyAny>>>,
}

impl SockWaiter {
    /// Take the watcher out of the fd table if it is still this waiter; a finished reader
    /// leaves the registration parked for the socket's next operation.
    fn remove_watch(slf: &Bound<'_, Self>, park: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.bind(py);
        let fd = this.sock.raw_fd();
        match this.op.direction() {
            Direction::Read if park => LoopCore::park_reader_if_callback(
                event_loop,
                fd,
                slf.as_any(),
                this.sock.object(py),
            ),
            dir => LoopCore::remove_watch_if_callback(event_loop, fd, dir, slf.as_any()),
        }
    }
}

#[pymethods]
impl SockWaiter {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        self.sock.traverse(&visit)?;
        self.op.traverse(&visit)?;
        self.future
            .traverse(&visit, |future, visit| visit.call(future.as_ref()))
    }

    /// Install this waiter as its fd's reader or writer and return the future it settles.
    fn wait<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.bind(py);
        let fd = this.sock.raw_fd();
        if may_have_transports(event_loop)? {
            event_loop.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
        }
        let future = event_loop.call_method0(intern!(py, "create_future"))?;
        this.future
            .with_borrow_mut(py, |slot| *slot = Some(future.clone().unbind()));
        LoopCore::add_sock_watch(
            event_loop,
            fd,
            this.op.direction(),
            slf.clone().into_any(),
            this.sock.object(py),
        )?;
        Ok(future)
    }

    /// Called by the awaiting coroutine however it ended: a watcher still installed (the
    /// operation was cancelled, or `wait()`'s caller gave up) stops watching the fd.
    fn finish(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::remove_watch(slf, false)
    }

    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some(future) = this
            .future
            .with_borrow(py, |f| f.as_ref().map(|f| f.clone_ref(py)))
        else {
            return Ok(());
        };
        let future = future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled while the event was on its way: nothing to deliver.
            return Self::remove_watch(slf, false);
        }
        let event_loop = this.event_loop.bind(py).get();
        let sock = this.sock.object(py);
        let outcome = this
            .sock
            .fd(py)
            .and_then(|fd| this.op.attempt(event_loop, sock, fd, false));
        if matches!(outcome, Ok(None)) {
            return Ok(()); // would block (or sent part): stay installed
        }
        Self::remove_watch(slf, true)?;
        match outcome {
            Ok(result) => {
                future.call_method1(intern!(py, "set_result"), (result,))?;
            }
            Err(err) if is_fatal_to_loop(py, &err) => return Err(err),
            Err(err) => {
                future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
            }
        }
        Ok(())
    }
}
