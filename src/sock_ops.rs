//! The per-event halves of `sock_recv` and `sock_sendall`: a recv that reads straight into a
//! `bytes` of the right size and a send from the caller's buffer, both reporting "would block"
//! as a value instead of an exception, and the reader callback that finishes a waiting
//! `sock_recv` when its socket becomes readable.
//!
//! Runs on the loop thread with the GIL held (the socket is non-blocking, so recv never
//! blocks). The coroutine around it (`Loop.sock_recv` in `_loop.py`) stays a real Python
//! coroutine, so `create_task(loop.sock_recv(...))` works as with the standard loop.

use std::os::fd::RawFd;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyValueError};
use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::PyTraverseError;

use crate::buffers::ByteView;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::socket_io;

/// `send(fd, data)` once, from the caller's buffer (any bytes-like object, as `socket.send`
/// accepts): the number of bytes the socket took, 0 when it would block.
pub fn send_now(fd: RawFd, data: &Bound<'_, PyAny>) -> PyResult<usize> {
    let view = ByteView::new(data)?;
    let sent = socket_io::send(fd, view.as_slice()).map_err(os_error)?;
    Ok(sent.unwrap_or(0))
}

/// `recv(fd, n)`: `Ok(None)` when the socket has nothing to read yet.
pub fn recv_bytes(py: Python<'_>, fd: RawFd, n: isize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    if n == 0 {
        // socket.recv(0) returns b'' without a syscall; recv(fd, 0) would report EAGAIN.
        return Ok(Some(PyBytes::new(py, b"")));
    }
    loop {
        // SAFETY: PyBytesWriter_Create returns a writer owning an `n`-byte buffer, or NULL with
        // an exception set. Every path below hands the writer back exactly once, to either
        // PyBytesWriter_Discard or PyBytesWriter_FinishWithSize.
        let writer = unsafe { ffi::compat::PyBytesWriter_Create(n) };
        if writer.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: `writer` is valid; its buffer holds `n` writable bytes, and recv writes at
        // most `n` bytes into it.
        let received = unsafe {
            let data = ffi::compat::PyBytesWriter_GetData(writer);
            libc::recv(fd, data, n as usize, 0)
        };
        if received < 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: the writer is discarded once, and not used afterwards.
            unsafe { ffi::compat::PyBytesWriter_Discard(writer) };
            match err.kind() {
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(os_error(err)),
            }
        }
        // SAFETY: `received` <= n bytes were initialised by recv; finishing consumes the writer
        // and returns a new reference (or NULL with an exception set).
        let bytes = unsafe {
            let obj =
                ffi::compat::PyBytesWriter_FinishWithSize(writer, received as ffi::Py_ssize_t);
            Bound::from_owned_ptr_or_err(py, obj)?
        };
        return Ok(Some(bytes.cast_into()?));
    }
}

/// The reader callback of a waiting `sock_recv`: receives once the fd is readable, settles
/// the future, and removes itself from the fd table.
#[pyclass(module = "ferroloop._core", frozen)]
pub struct RecvWaiter {
    event_loop: Py<LoopCore>,
    fd: RawFd,
    n: isize,
    future: Py<PyAny>,
}

impl RecvWaiter {
    pub fn new(event_loop: Py<LoopCore>, fd: RawFd, n: isize, future: Py<PyAny>) -> Self {
        RecvWaiter {
            event_loop,
            fd,
            n,
            future,
        }
    }
}

#[pymethods]
impl RecvWaiter {
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.event_loop)?;
        visit.call(&self.future)
    }

    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let event_loop = this.event_loop.bind(py);
        let future = this.future.bind(py);
        if future.call_method0(intern!(py, "done"))?.is_truthy()? {
            // Cancelled while waiting: nothing to deliver.
            LoopCore::remove_reader_if_callback(event_loop, this.fd, slf.as_any())?;
            return Ok(());
        }
        let outcome = recv_bytes(py, this.fd, this.n);
        if matches!(outcome, Ok(None)) {
            return Ok(()); // A spurious wake-up: stay registered.
        }
        LoopCore::remove_reader_if_callback(event_loop, this.fd, slf.as_any())?;
        match outcome {
            Ok(data) => {
                future.call_method1(intern!(py, "set_result"), (data,))?;
            }
            Err(err)
                if err.is_instance_of::<PyKeyboardInterrupt>(py)
                    || err.is_instance_of::<PySystemExit>(py) =>
            {
                return Err(err);
            }
            Err(err) => {
                future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
            }
        }
        Ok(())
    }
}
