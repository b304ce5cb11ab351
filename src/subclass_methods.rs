//! `LoopCore`'s methods, copied onto each Python subclass (`ferroloop.Loop`) as that class's
//! own method descriptors, so that CPython's specializing interpreter calls them directly.
//!
//! A method of a native type is a descriptor that remembers the type it was made for. CPython
//! 3.11+ turns `loop.call_soon(cb)` in a warm function into a specialized call only when the
//! receiver's type is exactly that type; `ferroloop.Loop` is a Python subclass of `LoopCore`,
//! so every call from Python code failed the check and took the generic path (a vectorcall
//! through the descriptor, a subtype check, a result check): about 100 instructions of a
//! `call_soon` that costs about 1,100 in the loop's own code. A copy made for the subclass,
//! sharing the same C function, passes the check.
//!
//! A copy is made only where the subclass would otherwise find `LoopCore`'s method (or a copy
//! of it) first in its MRO: a Python override anywhere on the way keeps winning. Dunder
//! methods are slots, not descriptors looked up this way, and are left alone.
//!
//! Runs once per subclass, at class creation (`__init_subclass__`), with the GIL held.

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};

/// Copy `core`'s methods onto `cls`, a subclass of it (see the module docs).
pub fn copy_onto(core: &Bound<'_, PyType>, cls: &Bound<'_, PyType>) -> PyResult<()> {
    if cls.is(core) || !cls.is_subclass(core)? {
        return Err(PyTypeError::new_err(
            "methods are copied only onto a subclass of LoopCore",
        ));
    }
    let mro = cls.getattr("__mro__")?.cast_into::<PyTuple>()?;
    let own = core.getattr("__dict__")?;
    for item in own.call_method0("items")?.try_iter()? {
        let (name, method) = item?.extract::<(Bound<'_, PyString>, Bound<'_, PyAny>)>()?;
        let Some(def) = method_def(&method) else {
            continue;
        };
        if name.to_str()?.starts_with("__") {
            continue;
        }
        match resolve(&mro, &name)? {
            Some((owner, found)) if !owner.is(cls) && method_def(&found) == Some(def) => {}
            _ => continue, // overridden on the way, or already copied onto `cls`
        }
        // SAFETY: `cls` is a live type; `def` is the method table entry of `core`'s own
        // descriptor, which lives as long as `core`, and `cls` (a subclass) keeps `core`
        // alive. PyDescr_NewMethod returns a new reference or NULL with an exception set.
        let copy = unsafe {
            Bound::from_owned_ptr_or_err(cls.py(), ffi::PyDescr_NewMethod(cls.as_type_ptr(), def))?
        };
        cls.setattr(&name, copy)?;
    }
    Ok(())
}

/// The first class of `mro` whose own dictionary holds `name`, and what it holds.
fn resolve<'py>(
    mro: &Bound<'py, PyTuple>,
    name: &Bound<'py, PyString>,
) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
    for class in mro.iter() {
        let namespace = class.getattr("__dict__")?;
        if namespace.contains(name)? {
            let found = namespace.get_item(name)?;
            return Ok(Some((class, found)));
        }
    }
    Ok(None)
}

/// The method table entry behind `object` when it is exactly a native method descriptor.
fn method_def(object: &Bound<'_, PyAny>) -> Option<*mut ffi::PyMethodDef> {
    let ptr = object.as_ptr();
    // SAFETY: `ptr` is a live object; reading its type pointer and comparing it with the
    // static method-descriptor type reads no other memory. Only then is it read as a
    // `PyMethodDescrObject`, which its type says it is.
    unsafe {
        let is_method = std::ptr::eq(
            ffi::Py_TYPE(ptr),
            std::ptr::addr_of_mut!(ffi::PyMethodDescr_Type),
        );
        is_method.then(|| (*ptr.cast::<ffi::PyMethodDescrObject>()).d_method)
    }
}
