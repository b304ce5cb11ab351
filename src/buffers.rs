//! `ByteView`: a borrowed, contiguous view of any bytes-like object (bytes, bytearray,
//! memoryview, array, ...), through the buffer protocol's simplest form (`PyBUF_SIMPLE`) — the
//! same request `socket.send` makes, so exactly the same objects are accepted. `bytes`, the
//! common case on the write path, is read directly: it is immutable, so no export is needed.

use std::ffi::c_void;
use std::mem::MaybeUninit;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

pub enum ByteView {
    Bytes(Py<PyBytes>),
    Exported(Box<ffi::Py_buffer>),
}

impl ByteView {
    pub fn new(obj: &Bound<'_, PyAny>) -> PyResult<ByteView> {
        if let Ok(bytes) = obj.cast_exact::<PyBytes>() {
            return Ok(ByteView::Bytes(bytes.clone().unbind()));
        }
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
        Ok(ByteView::Exported(view))
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            // SAFETY: a bytes object's contents are immutable and live as long as the object,
            // which this view holds a reference to; reading them needs no GIL interaction.
            ByteView::Bytes(bytes) => unsafe {
                let ptr = ffi::PyBytes_AsString(bytes.as_ptr());
                let len = ffi::PyBytes_Size(bytes.as_ptr()) as usize;
                std::slice::from_raw_parts(ptr as *const u8, len)
            },
            ByteView::Exported(view) => {
                let len = view.len as usize;
                if len == 0 {
                    return &[];
                }
                // SAFETY: PyBUF_SIMPLE guarantees `buf` points to `len` contiguous bytes that
                // stay valid until the buffer is released in Drop.
                unsafe { std::slice::from_raw_parts(view.buf as *const u8, len) }
            }
        }
    }

    /// The writable memory of a writable exporter (for recv_into); None if read-only.
    pub fn as_mut_ptr(&mut self) -> Option<*mut c_void> {
        match self {
            ByteView::Exported(view) if view.readonly == 0 => Some(view.buf),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        if let ByteView::Exported(view) = self {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released
            // once. Releasing drops a reference to the exporter; ByteViews are dropped while
            // attached to the interpreter.
            unsafe { ffi::PyBuffer_Release(&raw mut **view) };
        }
    }
}
