//! Recycling the handles of `call_soon` and `call_soon_threadsafe`.
//!
//! Most of these handles are dropped by the caller at once (a Task's step, a future's done
//! callback, a thread's `call_soon_threadsafe(...)` whose result nobody keeps), so once the
//! loop has run one it holds the last reference. Freeing it and allocating the next one costs
//! about as much as the rest of `call_soon`: the object allocation, its GC link, zeroing, and
//! the deallocation through PyO3's trampoline. Instead the loop releases what the handle held
//! (callback, arguments, context: what its deallocation would have released) and keeps the
//! empty object for the next `call_soon`, which fills it in. A handle is kept only when
//! nothing can tell the difference: the loop holds the only reference, no weak reference
//! points to it, it is exactly a `Handle` (not a timer, not a subclass) made outside debug
//! mode. At most `CAPACITY` are kept: enough for a loop whose callbacks schedule about as many
//! callbacks as they are (task steps, future callbacks), while a burst (a million
//! `call_soon`s, then a million runs) does not pin its memory and pays only the checks.
//!
//! Runs with the GIL held: on the loop thread (recycling, `call_soon`) and on any thread
//! calling `call_soon_threadsafe`.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::PyTypeInfo;

use crate::callback_context::ContextSlot;
use crate::gil_cell::GilCell;
use crate::handles::Handle;

/// Spare handles kept per loop: about 100 KiB when full.
const CAPACITY: usize = 1024;

#[derive(Default)]
pub struct HandlePool {
    spare: GilCell<Vec<Py<Handle>>>,
}

impl HandlePool {
    /// A handle for `callback(*args)` in `context` (a copy of the current context when
    /// `None`), as `Handle::new` makes outside debug mode: a recycled one when one is spare.
    pub fn make(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: Option<Bound<'_, PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<Handle>> {
        let context = ContextSlot::capture(py, context)?;
        if let Some(handle) = self.spare.with_borrow_mut(py, Vec::pop) {
            handle.get().reuse(py, callback, args, context, threadsafe);
            return Ok(handle);
        }
        crate::handle_memory::new_handle(py, Handle::plain(callback, args, context, threadsafe))
    }

    /// The loop has run `handle` and dropped it from the ready queue: keep it if nobody
    /// else can see it, otherwise let it go.
    /// Cheapest checks first: most handles either are kept by nobody (a recycle) or arrive
    /// when the pool is full (a burst).
    pub fn recycle(&self, py: Python<'_>, handle: Bound<'_, Handle>) {
        if !is_sole_reference(&handle)
            || !handle.get().is_recyclable_kind()
            || self.spare.with_borrow(py, |v| v.len() >= CAPACITY)
            || !is_plain_unwatched(&handle)
        {
            return;
        }
        handle.get().release_for_reuse(py);
        // Releasing may have run Python code (a finalizer) that found the handle again.
        if is_sole_reference(&handle) {
            self.spare.with_borrow_mut(py, |v| v.push(handle.unbind()));
        }
    }

    /// Let every spare handle go (the loop is closing or being collected).
    pub fn clear(&self, py: Python<'_>) {
        let spare = self.spare.with_borrow_mut(py, std::mem::take);
        drop(spare);
    }
}

/// Whether the caller's `Bound` is the only reference to `handle`.
fn is_sole_reference(handle: &Bound<'_, Handle>) -> bool {
    // SAFETY: the caller owns a reference, so the object is live; reading its count runs no
    // code.
    unsafe { ffi::Py_REFCNT(handle.as_ptr()) == 1 }
}

/// Whether `handle` is exactly a `Handle` with no weak reference to it.
fn is_plain_unwatched(handle: &Bound<'_, Handle>) -> bool {
    let ptr = handle.as_ptr();
    // SAFETY: `ptr` is a live object (the caller owns a reference); reading its type and, at
    // the offset its type gives, its weak-reference list pointer (present: `Handle` is a
    // `weakref` pyclass) reads memory the object owns.
    unsafe {
        let tp = ffi::Py_TYPE(ptr);
        if tp != Handle::type_object_raw(handle.py()) {
            return false;
        }
        let offset = (*tp).tp_weaklistoffset;
        offset == 0 || (*ptr.byte_offset(offset).cast::<*mut ffi::PyObject>()).is_null()
    }
}
