//! The `contextvars` context a handle's callback runs in, with no `Context` object kept per
//! queued callback when the caller's context is empty.
//!
//! `call_soon(callback)` (and `call_later`, `add_reader`, ...) runs the callback in a copy of
//! the caller's context taken when it was scheduled. Most programs set no context variable,
//! and a copy of an empty context that nobody else has seen is interchangeable with any other
//! such context. So a handle scheduled from an empty context keeps none (`ContextSlot` holds
//! `None`), and when it runs it borrows the spare empty context kept here, then gives it back
//! if the callback left it as it found it: still empty and referenced by nobody else. A
//! callback that set a variable in it, or kept a reference to it, leaves the handle owning it,
//! as the standard loop's handle would own its copy, so a watcher or timer handle that runs
//! again finds its variables, and `get_context()` returns it. `get_context()` on a handle that
//! has none yet makes its context then. A million queued callbacks thus hold no million
//! `Context` objects (72 bytes each, allocated at scheduling and freed after the run).
//!
//! Runs on whichever thread makes or runs a handle, always with the GIL held.

use std::cell::UnsafeCell;

use pyo3::ffi;
use pyo3::prelude::*;

use crate::gil_cell::GilCell;

/// One empty `Context` no handle owns, lent to the next handle that runs without one. One is
/// enough: a loop runs one callback at a time, and a second loop running a callback meanwhile
/// (on another thread, which took the GIL while the first callback released it) makes its own.
static SPARE: GilCell<Option<Py<PyAny>>> = GilCell::new(None);

/// A handle's context: `None` until the handle needs a context object of its own (see the
/// module docs). Not a `GilCell`, to keep handles small (see `handles::CallSlot`): every access
/// holds the GIL, runs no Python code while the reference exists, and never overlaps another.
pub struct ContextSlot(UnsafeCell<Option<Py<PyAny>>>);

// SAFETY: every access takes a `Python<'_>` token (the GIL is held; the module is `gil_used`)
// and neither releases the GIL nor runs Python code while it holds the reference, so no two
// threads touch the cell at once.
unsafe impl Sync for ContextSlot {}

/// Whether a context the slot lent for one run must go back to the spare, or stay.
#[must_use]
pub struct Lent(bool);

impl ContextSlot {
    /// The context for a new handle: `explicit` (the `context=` argument) when given, otherwise
    /// a copy of the current context, or nothing when that copy is empty.
    pub fn capture(py: Python<'_>, explicit: Option<Bound<'_, PyAny>>) -> PyResult<ContextSlot> {
        let context = match explicit {
            Some(c) if !c.is_none() => Some(c.unbind()),
            _ => {
                let copy = copy_current_context(py)?;
                (!is_empty_context(copy.as_ptr())).then(|| copy.unbind())
            }
        };
        Ok(ContextSlot(UnsafeCell::new(context)))
    }

    /// The handle's context object, made now (empty) if it had none.
    pub fn get(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(context) = self.borrowed(py) {
            // SAFETY: a borrowed pointer to the live context this slot owns.
            return Ok(unsafe { Bound::from_borrowed_ptr(py, context) }.unbind());
        }
        let made = self.fill(py, new_context(py)?.unbind());
        // SAFETY: a borrowed pointer to the live context this slot now owns.
        Ok(unsafe { Bound::from_borrowed_ptr(py, made) }.unbind())
    }

    /// The context to enter for one run, owned by the slot for the length of the run (so
    /// `get_context()` from the callback returns it). Borrowed: valid until `end_run`.
    pub fn begin_run(&self, py: Python<'_>) -> PyResult<(*mut ffi::PyObject, Lent)> {
        if let Some(context) = self.borrowed(py) {
            return Ok((context, Lent(false)));
        }
        let spare = SPARE.with_borrow_mut(py, Option::take);
        let context = match spare {
            Some(context) => context,
            None => new_context(py)?.unbind(),
        };
        Ok((self.fill(py, context), Lent(true)))
    }

    /// After the run: a lent context the callback left empty and unreferenced goes back to
    /// the spare; otherwise the handle keeps it.
    pub fn end_run(&self, py: Python<'_>, lent: Lent) {
        if !lent.0 {
            return;
        }
        let unused = self.borrowed(py).is_some_and(|ptr| {
            // SAFETY: `ptr` is the live context this slot owns; reading its reference count
            // and its length (a context's `len()`, the number of variables set) runs no
            // Python code.
            unsafe { ffi::Py_REFCNT(ptr) == 1 && is_empty_context(ptr) }
        });
        if unused {
            let context = self.take(py);
            let previous = SPARE.with_borrow_mut(py, |spare| std::mem::replace(spare, context));
            drop(previous);
        }
    }

    /// For `__traverse__`, which only reads the reference.
    pub fn context(&self, _py: Python<'_>) -> Option<&Py<PyAny>> {
        // SAFETY: see the type's comment.
        unsafe { &*self.0.get() }.as_ref()
    }

    /// Release the context from `Drop`, attached to the interpreter.
    pub fn release(&mut self, py: Python<'_>) {
        if let Some(context) = self.0.get_mut().take() {
            drop(context.into_bound(py));
        }
    }

    fn borrowed(&self, _py: Python<'_>) -> Option<*mut ffi::PyObject> {
        // SAFETY: see the type's comment.
        unsafe { &*self.0.get() }.as_ref().map(Py::as_ptr)
    }

    /// Give an empty slot `context`; returns the pointer of the slot's context.
    fn fill(&self, _py: Python<'_>, context: Py<PyAny>) -> *mut ffi::PyObject {
        // SAFETY: see the type's comment. Callers only fill an empty slot; were it not, the
        // new context (fresh and empty: its release runs no Python code) would be dropped.
        unsafe { &mut *self.0.get() }
            .get_or_insert(context)
            .as_ptr()
    }

    /// Release the context, for the caller to drop after this returns.
    pub fn take(&self, _py: Python<'_>) -> Option<Py<PyAny>> {
        // SAFETY: see the type's comment; the caller drops the value after this returns.
        unsafe { &mut *self.0.get() }.take()
    }

    /// Give the slot the context of `other` (a recycled handle's next call); returns what it
    /// held, for the caller to drop after this returns.
    pub fn replace(&self, _py: Python<'_>, other: ContextSlot) -> Option<Py<PyAny>> {
        // SAFETY: see the type's comment; the replaced value is dropped by the caller.
        std::mem::replace(unsafe { &mut *self.0.get() }, other.0.into_inner())
    }
}

/// Whether `context` (a `contextvars.Context`) has no variable set. Asks the type's
/// `mp_length` slot directly (what `len()` reaches through two generic layers); a -1 would
/// mean an error, treated as "not empty", with the exception cleared.
fn is_empty_context(context: *mut ffi::PyObject) -> bool {
    // SAFETY: `context` is a live Context; its type's mapping methods are static, and its
    // length (the number of variables set) runs no Python code.
    let len = unsafe {
        let mapping = (*ffi::Py_TYPE(context)).tp_as_mapping;
        match mapping.as_ref().and_then(|m| m.mp_length) {
            Some(length) => length(context),
            None => ffi::PyObject_Length(context),
        }
    };
    if len < 0 {
        // SAFETY: the GIL is held by every caller; clears the error the length call set.
        unsafe { ffi::PyErr_Clear() };
    }
    len == 0
}

fn copy_current_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an exception set;
    // `from_owned_ptr_or_err` takes ownership of exactly that.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()) }
}

fn new_context(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    // SAFETY: PyContext_New returns a new reference to an empty Context or NULL with an
    // exception set.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_New()) }
}
