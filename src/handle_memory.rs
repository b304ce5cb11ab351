//! Making and freeing a `Handle` without PyO3's generic paths.
//!
//! Every `call_soon` handle the pool (`handle_pool.rs`) cannot supply is allocated, and every
//! one it cannot keep is freed after its run: a burst of a million `call_soon`s makes and
//! frees a million. PyO3's way costs about 100 instructions each way around the real work:
//! allocation calls the base type's `tp_new` with an empty argument tuple before `tp_alloc`
//! and moves the value through two initializer layers; deallocation goes through a generic
//! trampoline (an attach guard that bumps a thread-local counter, a panic catch, three layers
//! of layout code).
//!
//! `new_handle` calls `tp_alloc` and writes the value where PyO3 keeps it. That place is
//! measured once, on a handle PyO3 made, and used only if the type's size and weak-reference
//! offset say the object holds nothing else (PyO3's borrow and thread checkers are empty for
//! a frozen, `Send` class): otherwise every handle is made by PyO3, as before.
//!
//! `dealloc`, the type's `tp_dealloc`, does PyO3's steps in PyO3's order: untrack from the
//! GC, drop the Rust value, clear weak references, `tp_free`, release the reference every
//! instance of a heap type holds to its type. Only `Handle` itself gets it: `TimerHandle`'s
//! deallocation (PyO3's, for the subclass) drops its base statically, never through this
//! slot; a Python subclass's `subtype_dealloc` would call it as its base's, with the
//! instance's own type, which is why the type freed and released is the instance's.
//!
//! Runs with the GIL held, on whichever thread makes a handle or drops its last reference.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{Borrowed, PyTypeInfo};

use crate::callback_context::ContextSlot;
use crate::handles::Handle;

/// Where in a `Handle` object its Rust value starts; 0 until measured, or when the layout is
/// not the one `new_handle` expects (then PyO3 makes every handle).
static VALUE_OFFSET: AtomicIsize = AtomicIsize::new(0);

/// Make `dealloc` the `tp_dealloc` of `handle_type` (`Handle`'s type object, just created),
/// and measure where PyO3 puts a handle's value (see the module docs).
pub fn install(handle_type: &Bound<'_, PyType>) -> PyResult<()> {
    let py = handle_type.py();
    let probe = Py::new(
        py,
        Handle::plain(
            py.None().into_bound(py),
            None,
            ContextSlot::capture(py, None)?,
            false,
        ),
    )?;
    let offset = std::ptr::from_ref(probe.get()) as isize - probe.as_ptr() as isize;
    let value_end = offset + std::mem::size_of::<Handle>() as isize;
    let pointer = std::mem::size_of::<*mut ffi::PyObject>() as isize;
    let tp = handle_type.as_type_ptr();
    // SAFETY: the type object is live and fully initialised; reading its sizes reads memory it
    // owns. CPython reads `tp_dealloc` each time an instance is freed; the probe is the only
    // instance so far and is dropped after the slot is set, by the new slot, which frees it as
    // PyO3's would.
    unsafe {
        if (*tp).tp_weaklistoffset == value_end && (*tp).tp_basicsize == value_end + pointer {
            VALUE_OFFSET.store(offset, Relaxed);
        }
        (*tp).tp_dealloc = Some(dealloc);
    }
    drop(probe);
    Ok(())
}

/// A new `Handle` object holding `value`: PyO3's object, made without PyO3's layers (see the
/// module docs).
pub fn new_handle(py: Python<'_>, value: Handle) -> PyResult<Py<Handle>> {
    let offset = VALUE_OFFSET.load(Relaxed);
    if offset == 0 {
        return Py::new(py, value);
    }
    let tp = Handle::type_object_raw(py);
    // SAFETY: `tp` is `Handle`'s live type object; `tp_alloc` returns a new, zero-filled,
    // GC-tracked object of its basic size (one reference, one on the type), or NULL with an
    // exception set. `offset` was measured on an object of this type and checked against its
    // size, so the value is written inside the object, where PyO3 reads it; the zeroes before
    // the write read as "nothing" to `__traverse__`, and no Python code runs in between.
    unsafe {
        let alloc = (*tp).tp_alloc.unwrap_or(ffi::PyType_GenericAlloc);
        let obj = alloc(tp, 0);
        if obj.is_null() {
            return Err(PyErr::fetch(py));
        }
        std::ptr::write(obj.byte_offset(offset).cast::<Handle>(), value);
        Ok(Bound::from_owned_ptr(py, obj)
            .cast_into_unchecked::<Handle>()
            .unbind())
    }
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
