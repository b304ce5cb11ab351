//! `ByteView`: a borrowed, contiguous view of any bytes-like object (bytes, bytearray,
//! memoryview, array, ...), through the buffer protocol's simplest form (`PyBUF_SIMPLE`) — the
//! same request `socket.send` makes, so exactly the same objects are accepted.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;

pub struct ByteView {
    view: Box<ffi::Py_buffer>,
}

impl ByteView {
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<ByteView> {
        let mut view: Box<MaybeUninit<ffi::Py_buffer>> = Box::new(MaybeUninit::uninit());
        // SAFETY: `view` points to writable storage for a Py_buffer; on success
        // PyObject_GetBuffer initialises it and we own the buffer until PyBuffer_Release.
        let rc =
            unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), view.as_mut_ptr(), ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::fetch(obj.py()));
        }
        // SAFETY: initialised by the successful call above.
        let view = unsafe { Box::from_raw(Box::into_raw(view).cast::<ffi::Py_buffer>()) };
        Ok(ByteView { view })
    }

    pub fn as_slice(&self) -> &[u8] {
        let len = self.view.len as usize;
        if len == 0 {
            return &[];
        }
        // SAFETY: PyBUF_SIMPLE guarantees `buf` points to `len` contiguous bytes that stay valid
        // (and, for immutable exporters, unchanged) until the buffer is released in Drop.
        unsafe { std::slice::from_raw_parts(self.view.buf as *const u8, len) }
    }

    /// The writable memory of a writable exporter (for recv_into); None if read-only.
    pub fn as_mut_ptr(&mut self) -> Option<*mut c_void> {
        if self.view.readonly != 0 {
            None
        } else {
            Some(self.view.buf)
        }
    }

    pub fn len(&self) -> usize {
        self.view.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once.
        // Releasing only drops a reference to the exporter; ByteViews are dropped while
        // attached to the interpreter.
        unsafe { ffi::PyBuffer_Release(&mut *self.view) };
    }
}
