//! What a callback is, cheaply: the Task it steps (if any), and a small label id standing for
//! its name, for the trace and the per-task statistics.
//!
//! Loop thread, GIL held; used only while instrumentation is on. A Task's step arrives as a
//! `TaskStepMethWrapper` (the first step) or a builtin method bound to the task (its wakeup);
//! a pure-Python Task's as a bound method. Labels are keyed by what stays the same between
//! calls — a builtin's method definition, a function's code object, an object's type — and
//! named by `ferroloop._support.callback_label` the first time a key is seen; the table keeps
//! the key objects alive so an address is never reused for another name.

use std::collections::HashMap;
use std::ffi::CStr;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicPtr, Ordering::Relaxed};

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyString;

use crate::gil_cell::GilCell;
use crate::support;

extern "C" {
    static mut PyMethod_Type: ffi::PyTypeObject;
    fn PyMethod_Function(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
    fn PyMethod_Self(method: *mut ffi::PyObject) -> *mut ffi::PyObject;
}

/// Hashes an object address: addresses are distinct and 16-byte aligned, so a multiply that
/// spreads the low bits is enough (SipHash, the default, costs more than the lookup it serves).
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, addr: usize) {
        self.0 = ((addr as u64) >> 4).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by object address.
pub type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

static TASK_TYPES: PyOnceLock<(Py<PyAny>, Option<Py<PyAny>>)> = PyOnceLock::new();

pub fn is_task(obj: &Bound<'_, PyAny>) -> bool {
    let py = obj.py();
    let Ok((c_task, py_task)) = TASK_TYPES.get_or_try_init(py, || -> PyResult<_> {
        let tasks = py.import("asyncio.tasks")?;
        let py_task = tasks.getattr("_PyTask").ok().map(Bound::unbind);
        Ok((tasks.getattr("Task")?.unbind(), py_task))
    }) else {
        return false;
    };
    // SAFETY: `obj` is live.
    let tp = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
    if std::ptr::eq(tp.cast::<ffi::PyObject>(), c_task.as_ptr()) {
        return true;
    }
    if std::ptr::eq(tp, LAST_NOT_A_TASK.load(Relaxed)) {
        return false;
    }
    // A subtype check, not isinstance(): Task has no __instancecheck__ to honour, and this
    // runs for every callback's bound object while tasks are followed.
    let is_subtype = |ty: &Py<PyAny>| {
        // SAFETY: both are live type objects (`ty` was imported as a class).
        unsafe { ffi::PyType_IsSubtype(tp, ty.as_ptr().cast::<ffi::PyTypeObject>()) != 0 }
    };
    let task = is_subtype(c_task) || py_task.as_ref().is_some_and(is_subtype);
    if !task {
        remember_not_a_task(tp);
    }
    task
}

/// The type last found not to be a Task (a strong reference, so its address cannot be
/// reused by another type while it is remembered): the objects a program's callbacks are
/// bound to are mostly of one or two types, and the subtype check walks the MRO.
static LAST_NOT_A_TASK: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

fn remember_not_a_task(tp: *mut ffi::PyTypeObject) {
    // SAFETY: `tp` is a live type (an object's type), and the caller holds the GIL: the new
    // reference is taken before it is stored, the old one is released after it is replaced,
    // and only threads holding the GIL touch the slot.
    unsafe {
        ffi::Py_IncRef(tp.cast());
        let old = LAST_NOT_A_TASK.swap(tp, Relaxed);
        if !old.is_null() {
            ffi::Py_DecRef(old.cast());
        }
    }
}

/// `_asyncio.TaskStepMethWrapper`, remembered the first time one is met (the type is not
/// exported). A static type up to 3.11, named `TaskStepMethWrapper`; a heap type of the
/// `_asyncio` module from 3.12, named `_asyncio.TaskStepMethWrapper`, which lives as long as
/// that module (loaded once, never unloaded).
static STEP_WRAPPER_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(std::ptr::null_mut());

fn is_step_wrapper(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: `obj` is live; every type object has a NUL-terminated `tp_name`.
    let tp = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
    let known = STEP_WRAPPER_TYPE.load(Relaxed);
    if !known.is_null() {
        return tp == known;
    }
    // SAFETY: as above.
    let name = unsafe { CStr::from_ptr((*tp).tp_name) };
    let name = name.to_bytes();
    if name == b"TaskStepMethWrapper" || name == b"_asyncio.TaskStepMethWrapper" {
        STEP_WRAPPER_TYPE.store(tp, Relaxed);
        return true;
    }
    false
}

/// The address of the object a method-like callback is bound to, when its layout alone says
/// (0: unbound, or only `bound_self` can tell). Takes no reference and calls nothing: it runs
/// in `call_soon` for every callback while tasks are followed, where a step that queues its
/// own next step is recognised by this address alone.
#[inline]
pub fn bound_self_addr(callback: &Bound<'_, PyAny>) -> usize {
    let p = callback.as_ptr();
    // SAFETY: `p` is a live object; each exact type check comes before the layout it guards
    // is read (`PyCFunctionObject` is every builtin method's layout; `PyMethod_Self` reads a
    // method object), and a step wrapper's fields are read only when its size is exactly the
    // layout's (see `step_wrapper_task`). Nothing is dereferenced from the result.
    unsafe {
        let tp = ffi::Py_TYPE(p);
        let owner = if tp == &raw mut ffi::PyCFunction_Type {
            ffi::PyCFunction_GetSelf(p)
        } else if tp == &raw mut PyMethod_Type {
            PyMethod_Self(p)
        } else if is_step_wrapper(callback) && has_step_wrapper_layout(tp) {
            (*(p.cast::<StepWrapper>())).task
        } else {
            std::ptr::null_mut()
        };
        owner as usize
    }
}

/// The object a method-like callback is bound to, if it is bound.
pub fn bound_self<'py>(callback: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = callback.py();
    let p = callback.as_ptr();
    let known = bound_self_addr(callback) as *mut ffi::PyObject;
    // SAFETY: `known` is a reference the callback holds (its bound object), and the callback
    // is live for this call: a new reference to it is made at once. Otherwise the type checks
    // come before the accessors they guard, and both return borrowed references (NULL for an
    // unbound builtin); `PyCFunction_Check` walks the MRO, so the exact checks came first.
    unsafe {
        if !known.is_null() {
            return Some(Bound::from_borrowed_ptr(py, known));
        }
        if is_step_wrapper(callback) {
            return step_wrapper_task(callback);
        }
        if ffi::PyCFunction_Check(p) != 0 {
            return Bound::from_borrowed_ptr_or_opt(py, ffi::PyCFunction_GetSelf(p));
        }
    }
    None
}

/// The C layout of `_asyncio.TaskStepMethWrapper` (3.7 through 3.14): the object header,
/// then the task and the value to send.
#[repr(C)]
struct StepWrapper {
    ob_base: ffi::PyObject,
    task: *mut ffi::PyObject,
    arg: *mut ffi::PyObject,
}

/// Whether a `TaskStepMethWrapper` type is laid out as `StepWrapper` (its basic size says so).
///
/// # Safety
/// `tp` must be a live type object.
#[inline]
unsafe fn has_step_wrapper_layout(tp: *mut ffi::PyTypeObject) -> bool {
    // SAFETY: the caller's promise.
    unsafe { (*tp).tp_basicsize as usize == std::mem::size_of::<StepWrapper>() }
}

/// The task of a `TaskStepMethWrapper` (a Task's first step, and every step after a bare
/// yield): read from the object when its size says the layout is the one above (a getattr of
/// `__self__` costs more than the rest of the step's bookkeeping), else through `__self__`.
fn step_wrapper_task<'py>(wrapper: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    let py = wrapper.py();
    let p = wrapper.as_ptr();
    // SAFETY: `p` is a live TaskStepMethWrapper; the fields are read only when its type's
    // size is exactly the layout's, in which case `task` is the strong reference the wrapper
    // holds.
    unsafe {
        if has_step_wrapper_layout(ffi::Py_TYPE(p)) {
            let task = (*(p.cast::<StepWrapper>())).task;
            return Bound::from_borrowed_ptr_or_opt(py, task);
        }
    }
    wrapper.getattr(intern!(py, "__self__")).ok()
}

/// The Task whose step `callback` is, if it is one.
pub fn task_owner<'py>(callback: &Bound<'py, PyAny>) -> Option<Bound<'py, PyAny>> {
    bound_self(callback).filter(is_task)
}

/// The key that names `callback`, and the object to keep alive for it.
fn label_key<'py>(callback: &Bound<'py, PyAny>) -> (usize, Bound<'py, PyAny>) {
    let py = callback.py();
    let p = callback.as_ptr();
    // SAFETY: as in `bound_self`; `PyCFunctionObject` is the layout of every PyCFunction, and
    // the function accessors return borrowed references to live objects.
    unsafe {
        if ffi::PyCFunction_Check(p) != 0 {
            let def = (*(p.cast::<ffi::PyCFunctionObject>())).m_ml;
            return (def as usize, callback.clone());
        }
        let func = if ffi::Py_TYPE(p) == &raw mut PyMethod_Type {
            PyMethod_Function(p)
        } else {
            p
        };
        if ffi::PyFunction_Check(func) != 0 {
            let code = ffi::PyFunction_GetCode(func);
            return (code as usize, Bound::from_borrowed_ptr(py, code));
        }
        let tp = callback.get_type().into_any();
        (tp.as_ptr() as usize, tp)
    }
}

/// Slots of `LabelTable::recent`: enough for the callbacks of a busy iteration.
const RECENT_SLOTS: usize = 64;

/// Label ids (from 1) and their names.
pub struct LabelTable {
    by_key: AddrMap<u32>,
    /// (key, id) of keys seen lately, by a hash of the key: most callbacks repeat, and this
    /// answers them without the map. A key is never reused for another name (the table keeps
    /// its object alive), so a slot is never stale, only overwritten.
    recent: [(usize, u32); RECENT_SLOTS],
    names: Vec<Py<PyString>>,
    keep: Vec<Py<PyAny>>,
}

impl Default for LabelTable {
    fn default() -> Self {
        LabelTable {
            by_key: AddrMap::default(),
            recent: [(0, 0); RECENT_SLOTS],
            names: Vec::new(),
            keep: Vec::new(),
        }
    }
}

#[inline]
fn recent_slot(key: usize) -> usize {
    (key >> 4).wrapping_mul(0x9E37_79B9) >> 7 & (RECENT_SLOTS - 1)
}

impl LabelTable {
    pub fn names(&self, py: Python<'_>) -> Vec<Py<PyString>> {
        self.names.iter().map(|n| n.clone_ref(py)).collect()
    }
}

fn lookup_or_add<'py>(
    table: &GilCell<LabelTable>,
    key: usize,
    keep: Bound<'py, PyAny>,
    name: impl FnOnce() -> PyResult<Bound<'py, PyString>>,
) -> PyResult<u32> {
    let py = keep.py();
    let slot = recent_slot(key);
    let known = table.with_borrow_mut(py, |t| {
        let (recent_key, recent_id) = t.recent[slot];
        if recent_key == key {
            return Some(recent_id);
        }
        let id = *t.by_key.get(&key)?;
        t.recent[slot] = (key, id);
        Some(id)
    });
    if let Some(id) = known {
        return Ok(id);
    }
    let name = name()?.unbind();
    Ok(table.with_borrow_mut(py, |t| {
        t.names.push(name);
        t.keep.push(keep.unbind());
        let id = t.names.len() as u32;
        t.by_key.insert(key, id);
        t.recent[slot] = (key, id);
        id
    }))
}

/// The label id of `callback`.
pub fn callback_label(table: &GilCell<LabelTable>, callback: &Bound<'_, PyAny>) -> PyResult<u32> {
    let (key, keep) = label_key(callback);
    lookup_or_add(table, key, keep, || support::callback_label(callback))
}

/// The label for a step that ended in a bare yield (`await asyncio.sleep(0)`).
pub fn bare_yield_label(table: &GilCell<LabelTable>, py: Python<'_>) -> PyResult<u32> {
    // Key 1 is no object's address (addresses are aligned), so it cannot collide.
    let keep = py.None().into_bound(py);
    lookup_or_add(table, 1, keep, || Ok(PyString::new(py, "__bare_yield")))
}

/// The label of the innermost coroutine (or generator) `task` is suspended in.
pub fn innermost_label(table: &GilCell<LabelTable>, task: &Bound<'_, PyAny>) -> PyResult<u32> {
    let py = task.py();
    let mut frame_owner = task.getattr(intern!(py, "_coro"))?;
    // SAFETY: type checks on a live object.
    let (mut is_coro, is_gen) = unsafe {
        (
            ffi::PyCoro_CheckExact(frame_owner.as_ptr()) != 0,
            ffi::PyGen_Check(frame_owner.as_ptr()) != 0,
        )
    };
    if !is_coro && !is_gen {
        // Some other awaitable object: name its type.
        return callback_label(table, &frame_owner);
    }
    for _ in 0..64 {
        let inner = if is_coro {
            frame_owner.getattr(intern!(py, "cr_await"))?
        } else {
            frame_owner.getattr(intern!(py, "gi_yieldfrom"))?
        };
        // SAFETY: type checks on a live object.
        let (inner_coro, inner_gen) = unsafe {
            (
                ffi::PyCoro_CheckExact(inner.as_ptr()) != 0,
                ffi::PyGen_Check(inner.as_ptr()) != 0,
            )
        };
        if !inner_coro && !inner_gen {
            break;
        }
        frame_owner = inner;
        is_coro = inner_coro;
    }
    let code = frame_owner.getattr(if is_coro {
        intern!(py, "cr_code")
    } else {
        intern!(py, "gi_code")
    })?;
    let key = code.as_ptr() as usize;
    lookup_or_add(table, key, code.clone(), || {
        Ok(code
            .getattr(intern!(py, "co_qualname"))?
            .cast_into::<PyString>()?)
    })
}
