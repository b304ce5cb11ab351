//! Freeing a `Handle`: the type's own `tp_dealloc`, in place of PyO3's generic one.
//!
//! Every `call_soon` handle the pool cannot keep is freed after its run: a burst of a million
//! `call_soon`s frees a million. PyO3's deallocation goes through a generic trampoline (an
//! attach guard that bumps a thread-local counter, a panic catch, three layers of layout
//! code): about 120 instructions per handle, where the work is dropping the fields and
//! freeing the memory. This does the same steps, in PyO3's order, directly: untrack from the
//! GC, drop the Rust value, clear weak references, `tp_free`, release the reference every
//! instance of a heap type holds to its type. Only `Handle` itself gets it: `TimerHandle`'s
//! deallocation (PyO3's, for the subclass) drops its base statically, never through this
//! slot; a Python subclass's `subtype_dealloc` calls it as its base's, with the instance's
//! own type, which is why the type freed and released is the instance's.
//!
//! Called by CPython with the GIL held, on whichever thread drops the last reference.

use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::Borrowed;

use crate::handles::Handle;

/// Make `dealloc` the `tp_dealloc` of `handle_type` (`Handle`'s type object, just created).
pub fn install(handle_type: &Bound<'_, PyType>) {
    // SAFETY: the type object is live and fully initialised; CPython reads `tp_dealloc` each
    // time an instance is freed, and no instance exists yet (the module is being set up).
    unsafe { (*handle_type.as_type_ptr()).tp_dealloc = Some(dealloc) };
}

/// # Safety
/// Called by CPython only, for an instance of `Handle` (or a Python subclass) whose reference
/// count reached zero, with the GIL held.
unsafe extern "C" fn dealloc(obj: *mut ffi::PyObject) {
    // SAFETY: see the function's contract: `obj` is a live instance being freed, and this
    // thread holds the GIL.
    unsafe {
        let py = Python::assume_attached();
        let tp = ffi::Py_TYPE(obj);
        ffi::PyObject_GC_UnTrack(obj.cast());
        // Borrowed: no reference count change on an object already at zero.
        let handle = Borrowed::from_ptr(py, obj).cast_unchecked::<Handle>();
        let value = std::ptr::from_ref(handle.get()).cast_mut();
        if catch_unwind(AssertUnwindSafe(|| std::ptr::drop_in_place(value))).is_err() {
            PyRuntimeError::new_err("internal error in ferroloop: a Handle's drop panicked")
                .write_unraisable(py, None);
        }
        let offset = (*tp).tp_weaklistoffset;
        if offset > 0 && !(*obj.byte_offset(offset).cast::<*mut ffi::PyObject>()).is_null() {
            ffi::PyObject_ClearWeakRefs(obj);
        }
        match (*tp).tp_free {
            Some(free) => free(obj.cast()),
            None => ffi::PyObject_GC_Del(obj.cast()),
        }
        // Every instance of a heap type holds a reference to its type (PyO3's types are heap
        // types, and so are Python subclasses).
        ffi::Py_DECREF(tp.cast());
    }
}
