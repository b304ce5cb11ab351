//! `LoopCore.call_soon` and `call_soon_threadsafe` as hand-written
//! `METH_FASTCALL | METH_KEYWORDS` methods.
//!
//! `call_soon(callback, *args, context=None)` is the loop's hottest entry point: every Task
//! step and every future callback arrives through it, always with `context=` given by keyword;
//! `call_soon_threadsafe` is what every other thread (executors, `run_coroutine_threadsafe`)
//! calls per item. PyO3's generic argument parsing turns each keyword name into a `&str` and
//! compares bytes; here the name is first compared by identity with the interned `"context"`
//! (what CPython's Task and Future pass), then by value. Everything after parsing is
//! `LoopCore::call_soon` / `LoopCore::call_soon_threadsafe`.
//!
//! Loop thread (or any thread, for the error paths), called by CPython with the GIL held.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use crate::event_loop::LoopCore;

/// The arguments as CPython's vectorcall convention hands them over.
struct FastArgs {
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
}

/// Which of the two methods a call is for: its name in error messages, and whether it wakes
/// the loop.
#[derive(Clone, Copy)]
enum Soon {
    Plain,
    Threadsafe,
}

impl Soon {
    fn name(self) -> &'static str {
        match self {
            Soon::Plain => "call_soon",
            Soon::Threadsafe => "call_soon_threadsafe",
        }
    }
}

unsafe extern "C" fn call_soon(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded unchanged from CPython's call of this METH_FASTCALL method.
    unsafe { dispatch(Soon::Plain, slf, args, nargsf, kwnames) }
}

unsafe extern "C" fn call_soon_threadsafe(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: forwarded unchanged from CPython's call of this METH_FASTCALL method.
    unsafe { dispatch(Soon::Threadsafe, slf, args, nargsf, kwnames) }
}

/// # Safety
/// The arguments must be those CPython passes to a `METH_FASTCALL | METH_KEYWORDS` method,
/// on a thread that holds the GIL.
unsafe fn dispatch(
    which: Soon,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls METH_FASTCALL methods with the GIL held by this thread.
    let py = unsafe { Python::assume_attached() };
    let fast = FastArgs {
        args,
        nargsf,
        kwnames,
    };
    // SAFETY: `slf` and the vectorcall arguments are valid for the duration of this call.
    let outcome = catch_unwind(AssertUnwindSafe(|| unsafe {
        call_soon_impl(py, slf, &fast, which)
    }));
    let result = outcome.unwrap_or_else(|_| {
        Err(PyRuntimeError::new_err(format!(
            "internal error in ferroloop's {} (a Rust panic); please report it",
            which.name()
        )))
    });
    match result {
        Ok(handle) => handle,
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// `slf` must be a live object and `fast` must describe a valid vectorcall argument array,
/// as CPython guarantees for a method call.
unsafe fn call_soon_impl(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    fast: &FastArgs,
    which: Soon,
) -> PyResult<*mut ffi::PyObject> {
    // CPython passes `nargs` positional arguments followed by one value per keyword name, all
    // borrowed for the call.
    // SAFETY: `nargsf` is the count CPython passed with this vectorcall.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(fast.nargsf as usize) } as usize;
    let kwnames = if fast.kwnames.is_null() {
        None
    } else {
        // SAFETY: a non-null `kwnames` is the call's tuple of keyword names, alive for the call.
        Some(unsafe { Bound::from_borrowed_ptr(py, fast.kwnames) }.cast_into::<PyTuple>()?)
    };
    let nkw = kwnames.as_ref().map_or(0, pyo3::types::PyTupleMethods::len);
    let values = if nargs + nkw == 0 {
        &[][..]
    } else {
        // SAFETY: `args` points at `nargs + nkw` object pointers (see above).
        unsafe { std::slice::from_raw_parts(fast.args, nargs + nkw) }
    };
    // SAFETY: every pointer of `values` is a live object borrowed for the call.
    let arg = |p: &*mut ffi::PyObject| unsafe { Bound::from_borrowed_ptr(py, *p) };
    if nargs == 0 {
        return Err(PyTypeError::new_err(format!(
            "{}() missing 1 required positional argument: 'callback'",
            which.name()
        )));
    }
    let mut context = None;
    if let Some(names) = &kwnames {
        for (name, value) in names.iter().zip(&values[nargs..]) {
            if is_context_keyword(&name)? {
                context = Some(arg(value));
            } else {
                return Err(PyTypeError::new_err(format!(
                    "{}() got an unexpected keyword argument '{name}'",
                    which.name()
                )));
            }
        }
    }
    let callback = arg(&values[0]);
    let extra = if nargs == 1 {
        None
    } else {
        Some(PyTuple::new(py, values[1..nargs].iter().map(arg))?)
    };
    // SAFETY: the method descriptor was made for the LoopCore type, and CPython checks that
    // `self` is an instance of it before calling.
    let slf = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<LoopCore>() };
    let handle = match which {
        Soon::Plain => LoopCore::call_soon(&slf, callback, extra, context)?,
        Soon::Threadsafe => LoopCore::call_soon_threadsafe(&slf, callback, extra, context)?,
    };
    Ok(handle.into_ptr())
}

/// The last `"context"` keyword name that was equal to, but not the same object as, the
/// interned one: CPython 3.11's C Task passes a string of its own, the same object every time.
/// Holds a strong reference, never released.
static CONTEXT_NAME_SEEN: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

fn is_context_keyword(name: &Bound<'_, PyAny>) -> PyResult<bool> {
    let expected = intern!(name.py(), "context");
    if name.is(expected) || name.as_ptr() == CONTEXT_NAME_SEEN.load(Relaxed) {
        return Ok(true);
    }
    if !name.eq(expected)? {
        return Ok(false);
    }
    let kept = name.clone().into_ptr();
    if CONTEXT_NAME_SEEN
        .compare_exchange(std::ptr::null_mut(), kept, Relaxed, Relaxed)
        .is_err()
    {
        // Another equal name is already remembered; keep that one.
        // SAFETY: `kept` is the strong reference `into_ptr` produced just above, released once.
        drop(unsafe { Bound::from_owned_ptr(name.py(), kept) });
    }
    Ok(true)
}

/// Install the fast `call_soon` and `call_soon_threadsafe` on the `LoopCore` type, replacing
/// nothing else.
pub fn install(loop_core: &Bound<'_, pyo3::types::PyType>) -> PyResult<()> {
    install_method(
        loop_core,
        c"call_soon",
        call_soon,
        c"call_soon($self, callback, /, *args, context=None)\n--\n\nArrange for callback(*args) to be called soon, in `context` (a copy of the current context by default). Returns a Handle.",
    )?;
    install_method(
        loop_core,
        c"call_soon_threadsafe",
        call_soon_threadsafe,
        c"call_soon_threadsafe($self, callback, /, *args, context=None)\n--\n\nLike call_soon, from any thread: also wakes the loop if it is waiting for I/O. Returns a Handle.",
    )
}

fn install_method(
    loop_core: &Bound<'_, pyo3::types::PyType>,
    name: &'static std::ffi::CStr,
    method: ffi::PyCFunctionFastWithKeywords,
    doc: &'static std::ffi::CStr,
) -> PyResult<()> {
    let py = loop_core.py();
    let def = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: method,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr(),
    }));
    // SAFETY: `def` is leaked, so it outlives the descriptor; the type pointer is a live type
    // object. PyDescr_NewMethod returns a new reference or NULL with an exception set.
    let descr = unsafe {
        Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(loop_core.as_type_ptr(), def))?
    };
    loop_core.setattr(name.to_string_lossy().as_ref(), descr)
}
