//! `SocketOwner`: does the socket object a transport or a `sock_recv` waiter was given still
//! own the fd number the loop acts on?
//!
//! An application may close a socket behind the loop's back (or a socket it passed as
//! `sock=`), and the kernel hands the number to the next file it opens. Acting on the raw
//! number then reads or writes somebody else's connection; the standard library acts on the
//! socket object instead and gets EBADF. So every syscall on such an fd is preceded by this
//! check, which must be cheap: for `socket.socket` objects it reads the fd straight from the
//! C object (`PySocketSockObject.sock_fd`, which `close()` and `detach()` set to -1), after
//! checking once that the layout is what we expect; anything else is asked `fileno()`.
//!
//! Loop thread, GIL held.

use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::PyTraverseError;

use crate::errors::os_error;

pub struct SocketOwner {
    sock: Py<PyAny>,
    fd: RawFd,
    /// `sock` is a `_socket.socket` whose `sock_fd` field was seen to hold `fd`.
    direct: bool,
}

/// `PySocketSockObject.sock_fd` (`Modules/socketmodule.h`): the first field after the object
/// header, a C int on POSIX, in every CPython from 3.11 to 3.15.
///
/// # Safety
/// `sock` must be an instance of `_socket.socket` (or a subclass), alive for the call, and
/// the caller must be attached to the interpreter.
pub(crate) unsafe fn read_sock_fd(sock: *mut ffi::PyObject) -> RawFd {
    // SAFETY: per the contract, `sock` points to a PySocketSockObject, whose allocation
    // extends past the header by at least the int read here.
    // The header's size is a multiple of its pointer alignment, so the int is aligned.
    unsafe {
        sock.cast::<libc::c_int>()
            .byte_add(std::mem::size_of::<ffi::PyObject>())
            .read()
    }
}

fn is_socket_object(sock: &Bound<'_, PyAny>) -> PyResult<bool> {
    static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let socket_type = SOCKET_TYPE.import(sock.py(), "_socket", "socket")?;
    sock.is_instance(socket_type)
}

impl SocketOwner {
    /// `sock`, which owns `fd` now.
    pub fn new(sock: Bound<'_, PyAny>, fd: RawFd) -> PyResult<Self> {
        // SAFETY: read only after the instance check, on an object `sock` keeps alive.
        let direct = is_socket_object(&sock)? && unsafe { read_sock_fd(sock.as_ptr()) } == fd;
        Ok(SocketOwner {
            sock: sock.unbind(),
            fd,
            direct,
        })
    }

    /// `fd` while the socket still owns it, EBADF (as the socket's own methods raise once it
    /// is closed) when it no longer does.
    #[inline]
    pub fn fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        let current = if self.direct {
            // SAFETY: `direct` was set only for a `_socket.socket` instance, which `self.sock`
            // keeps alive; a type assigned later through `__class__` must have the same
            // layout. The GIL is held (a `Python` token), so nothing writes the field now.
            i64::from(unsafe { read_sock_fd(self.sock.as_ptr()) })
        } else {
            self.sock
                .bind(py)
                .call_method0(intern!(py, "fileno"))?
                .extract()?
        };
        if current == i64::from(self.fd) {
            Ok(self.fd)
        } else {
            Err(os_error(std::io::Error::from_raw_os_error(libc::EBADF)))
        }
    }

    /// The socket object, for what only its own methods do (the socket module's address
    /// conversions).
    pub fn object<'py>(&self, py: Python<'py>) -> &Bound<'py, PyAny> {
        self.sock.bind(py)
    }

    /// The number the socket had when it was handed over (to unregister it).
    pub fn raw_fd(&self) -> RawFd {
        self.fd
    }

    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.sock)
    }
}
