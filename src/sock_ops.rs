//! `sock_recv`'s read: a recv that reads straight into a `bytes` of the right size (through a
//! spare buffer kept for large sizes), reporting "would block" as a value instead of an
//! exception. The operation around it (first try, waiting, the future) is `sock_waiters.rs`.
//!
//! Runs on the loop thread with the GIL held (the socket is non-blocking, so recv never
//! blocks).

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::sys::nonblocking;

/// `recv(fd, n)`: `Ok(None)` when the socket has nothing to read yet.
pub fn recv_bytes(py: Python<'_>, fd: RawFd, n: isize) -> PyResult<Option<Bound<'_, PyBytes>>> {
    if n < 0 {
        return Err(PyValueError::new_err("negative buffersize in recv"));
    }
    if n == 0 {
        // socket.recv(0) returns b'' without a syscall; recv(fd, 0) would report EAGAIN.
        return Ok(Some(PyBytes::new(py, b"")));
    }
    // SAFETY: PyBytesWriter_Create returns a writer owning an `n`-byte buffer, or NULL with
    // an exception set. Every path below hands the writer back exactly once, to either
    // PyBytesWriter_Discard or PyBytesWriter_FinishWithSize.
    let writer = unsafe { ffi::compat::PyBytesWriter_Create(n) };
    if writer.is_null() {
        return Err(PyErr::fetch(py));
    }
    // SAFETY: `writer` is valid; its buffer holds `n` writable bytes, and recv writes at most
    // `n` bytes into it.
    let received = unsafe {
        let data = ffi::compat::PyBytesWriter_GetData(writer);
        nonblocking::recv_raw(fd, data, n as usize)
    };
    let received = match received {
        Ok(Some(len)) => len,
        other => {
            // SAFETY: the writer is discarded once, and not used afterwards.
            unsafe { ffi::compat::PyBytesWriter_Discard(writer) };
            return other.map(|_| None).map_err(os_error);
        }
    };
    // SAFETY: `received` <= n bytes were initialised by recv; finishing consumes the writer and
    // returns a new reference (or NULL with an exception set).
    let bytes = unsafe {
        let obj = ffi::compat::PyBytesWriter_FinishWithSize(writer, received as ffi::Py_ssize_t);
        Bound::from_owned_ptr_or_err(py, obj)?
    };
    Ok(Some(bytes.cast_into()?))
}

/// Below this `sock_recv` size a fresh `bytes` per call is cheap (pymalloc or a small malloc).
const SPARE_MIN_SIZE: isize = 64 * 1024;
/// Results up to this size are copied out of the spare buffer, which is kept; larger ones take
/// the buffer itself (no copy) and the next call makes a new one.
const COPY_OUT_MAX: usize = 16 * 1024;

/// A `bytes` buffer of one large `sock_recv` size (programs and the bench ask for 256 KiB),
/// kept between calls: without it every call allocates that much, and the call that finds
/// nothing to read, or a few bytes, throws it away again.
pub struct RecvSpare {
    writer: *mut ffi::compat::PyBytesWriter,
    size: isize,
}

// SAFETY: the writer is only touched through the loop's `GilCell`, i.e. by the thread that
// holds the GIL; a bytes writer is not tied to the thread that made it.
unsafe impl Send for RecvSpare {}

impl RecvSpare {
    fn new(py: Python<'_>, size: isize) -> PyResult<RecvSpare> {
        // SAFETY: returns a writer owning a `size`-byte buffer, or NULL with an exception set.
        let writer = unsafe { ffi::compat::PyBytesWriter_Create(size) };
        if writer.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(RecvSpare { writer, size })
    }

    /// The buffer: `size` writable bytes, valid until the writer is finished or discarded.
    fn data(&self) -> *mut libc::c_void {
        // SAFETY: `writer` is a live writer owned by this struct.
        unsafe { ffi::compat::PyBytesWriter_GetData(self.writer) }
    }

    /// Hand the buffer out as a `bytes` of its first `len` bytes.
    fn finish(self, py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyBytes>> {
        let writer = std::mem::ManuallyDrop::new(self).writer;
        // SAFETY: `len` <= size bytes were written; finishing consumes the writer exactly once
        // (ManuallyDrop keeps Drop from discarding it) and returns a new reference or NULL.
        let obj = unsafe { ffi::compat::PyBytesWriter_FinishWithSize(writer, len as isize) };
        // SAFETY: a new reference (or NULL with an exception set), owned from here on.
        Ok(unsafe { Bound::from_owned_ptr_or_err(py, obj)? }.cast_into()?)
    }
}

impl Drop for RecvSpare {
    fn drop(&mut self) {
        // SAFETY: the writer is live and discarded once; dropping happens with the GIL held
        // (inside the loop's GilCell or its deallocation), and freeing a bytes runs no Python.
        unsafe { ffi::compat::PyBytesWriter_Discard(self.writer) };
    }
}

/// `recv_bytes` for a loop's `sock_recv`: large sizes go through the loop's spare buffer.
pub fn recv_bytes_with_spare<'py>(
    py: Python<'py>,
    spare: &GilCell<Option<RecvSpare>>,
    fd: RawFd,
    n: isize,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if n < SPARE_MIN_SIZE {
        return recv_bytes(py, fd, n);
    }
    // Taken out of the cell, so no borrow is held while Python objects are made or freed.
    let kept = spare.with_borrow_mut(py, std::option::Option::take);
    let buffer = match kept {
        Some(buffer) if buffer.size == n => buffer,
        other => {
            drop(other);
            RecvSpare::new(py, n)?
        }
    };
    // SAFETY: the buffer holds `n` writable bytes and stays alive for the call.
    let received = unsafe { nonblocking::recv_raw(fd, buffer.data(), n as usize) };
    let keep = |buffer| spare.with_borrow_mut(py, |v| *v = Some(buffer));
    match received {
        Ok(Some(len)) if len > COPY_OUT_MAX => buffer.finish(py, len).map(Some),
        Ok(Some(len)) => {
            // SAFETY: recv initialised the first `len` bytes of the buffer.
            let data = unsafe { std::slice::from_raw_parts(buffer.data().cast::<u8>(), len) };
            let bytes = PyBytes::new(py, data);
            keep(buffer);
            Ok(Some(bytes))
        }
        Ok(None) => {
            keep(buffer);
            Ok(None)
        }
        Err(err) => {
            keep(buffer);
            Err(os_error(err))
        }
    }
}
