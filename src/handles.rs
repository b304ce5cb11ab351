//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and `add_reader` return, and what
//! the ready queue and the timer heap hold.
//!
//! Runs on the loop thread with the GIL held. A handle keeps its callback, its arguments (the
//! `*args` tuple the call already built, so no second tuple is made; none for a callback
//! called without arguments) and the `contextvars` context it runs in. Running one enters the context with the C API and calls the callback
//! directly: no bound `Context.run` method, no new argument tuple. Cancelling a handle drops its
//! callback and arguments (outside debug mode), as `asyncio.Handle.cancel` does, so cancelled
//! handles a program keeps do not keep what they reference alive.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyDict, PyTuple, PyType};
use pyo3::PyTraverseError;

use crate::callback_context::ContextSlot;
use crate::stats::CancelCounts;
use crate::support;
use crate::threadsafe_handle::{self, RunLock};

/// What a `TimerHandle` shares with its loop: the loop's counts of cancelled timers (those
/// still in the heap drive compaction). Kept in the `TimerHandle`, not in every `Handle`: a
/// program with a million callbacks queued holds a million handles.
pub struct TimerState {
    pub cancelled: Arc<CancelCounts>,
}

/// A handle's state, one bit each in one byte (`Handle::flags`).
const CANCELLED: u8 = 1;
/// A timer still in its loop's heap (never set for other handles).
const SCHEDULED: u8 = 2;
/// `call_soon_threadsafe`'s handles: cancelling from another thread waits for the running
/// callback (`threadsafe_handle.rs`).
const THREADSAFE: u8 = 4;
/// A thread-safe handle's callback is running (the `RunLock`'s bit).
const RUNNING: u8 = 8;
/// The base of a `TimerHandle`.
const TIMER: u8 = 16;

/// The callback and the arguments it is called with: `None` for none, so the common
/// `call_soon(callback)` and every Task step neither build nor release an empty tuple.
struct Call {
    callback: Py<PyAny>,
    args: Option<Py<PyTuple>>,
}

impl Call {
    fn new(callback: Bound<'_, PyAny>, args: Option<Bound<'_, PyTuple>>) -> Call {
        Call {
            callback: callback.unbind(),
            args: args.filter(|a| !a.is_empty()).map(Bound::unbind),
        }
    }

    fn clone_ref(&self, py: Python<'_>) -> Call {
        Call {
            callback: self.callback.clone_ref(py),
            args: self.args.as_ref().map(|a| a.clone_ref(py)),
        }
    }

    /// The arguments as the tuple asyncio's `Handle._args` is.
    fn args_tuple<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        match &self.args {
            Some(args) => args.bind(py).clone(),
            None => PyTuple::empty(py),
        }
    }

    /// Release both references through `Bound`, attached to the interpreter.
    fn release(self, py: Python<'_>) {
        drop(self.callback.into_bound(py));
        drop(self.args.map(|a| a.into_bound(py)));
    }
}

/// `module = "ferroloop"`: exported as `ferroloop.Handle` (see `lib.rs`).
#[pyclass(module = "ferroloop", subclass, frozen, weakref)]
pub struct Handle {
    /// `None` once `cancel()` released it.
    call: CallSlot,
    /// Released in `Drop`, through the attached interpreter. Empty while the context would be
    /// an empty copy nobody has seen (see `callback_context.rs`).
    context: ContextSlot,
    source_traceback: Option<Py<PyAny>>,
    /// `CANCELLED`, `SCHEDULED`, `THREADSAFE`, `RUNNING`, `TIMER`: one byte, so that with the
    /// tag beside it a handle is 64 bytes (80 with the GC header) and a million queued
    /// callbacks fault in 16 MB less. Atomic: another thread may cancel a thread-safe handle,
    /// and a recycled handle changes kind (`handle_pool.rs`).
    flags: AtomicU8,
    /// What the instruments learned about this handle's callback, kept so that a handle run
    /// again (an fd watcher's) or queued and then run (a task step) is looked at once:
    /// see `instrument::HandleTag`. Beside the flags, in what was padding.
    pub(crate) instrument_tag: AtomicU32,
}

/// A handle's callback and arguments, `None` once released. Not a `GilCell`: its borrow flag
/// would cost 8 bytes in every handle (a program can have a million queued), and every access
/// here is short and calls no Python code — `with` only clones references out, `take` moves
/// the call out for the caller to drop — so accesses cannot overlap on one thread, and the
/// GIL, held for each whole access, keeps other threads out.
struct CallSlot(UnsafeCell<Option<Call>>);

// SAFETY: every shared access takes a `Python<'_>` token (the GIL is held, and the module is
// `gil_used`) and never releases the GIL or runs Python code while the reference exists, so
// no two threads touch the cell at once.
unsafe impl Sync for CallSlot {}

impl CallSlot {
    fn new(call: Call) -> CallSlot {
        CallSlot(UnsafeCell::new(Some(call)))
    }

    /// Look at the call; `f` must only read or clone references (no Python code, no drops).
    #[inline]
    fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(Option<&Call>) -> R) -> R {
        // SAFETY: see the type's comment: no other access is active, and `f` ends before any
        // other can start.
        f(unsafe { &*self.0.get() }.as_ref())
    }

    /// Release the call, returning it for the caller to drop after this returns.
    fn take(&self, _py: Python<'_>) -> Option<Call> {
        // SAFETY: see the type's comment; the moved-out value is dropped by the caller, after
        // the access has ended.
        unsafe { &mut *self.0.get() }.take()
    }

    /// Give a released slot its next call (a recycled handle); returns what it held, for the
    /// caller to drop after this returns.
    fn put(&self, _py: Python<'_>, call: Call) -> Option<Call> {
        // SAFETY: see the type's comment; the replaced value is dropped by the caller.
        unsafe { &mut *self.0.get() }.replace(call)
    }

    fn get_mut(&mut self) -> &mut Option<Call> {
        self.0.get_mut()
    }
}

impl Handle {
    /// `context=None` means "a copy of the current context", as in the standard loop.
    /// Crate-private: a `Handle` must be made, used and dropped attached to the interpreter
    /// (its `Drop` relies on it), which only the loop's own paths guarantee.
    pub(crate) fn new(
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: Option<Bound<'_, PyAny>>,
        timer: bool,
        debug: bool,
    ) -> PyResult<Handle> {
        let context = ContextSlot::capture(py, context)?;
        let source_traceback = if debug {
            Some(support::extract_stack(py)?)
        } else {
            None
        };
        Ok(Handle {
            call: CallSlot::new(Call::new(callback, args)),
            context,
            source_traceback,
            flags: AtomicU8::new(if timer { TIMER | SCHEDULED } else { 0 }),
            instrument_tag: AtomicU32::new(0),
        })
    }

    /// A `call_soon` handle made outside debug mode, with its context already captured
    /// (`handle_pool.rs`); `threadsafe` as `with_run_lock`.
    pub(crate) fn plain(
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: ContextSlot,
        threadsafe: bool,
    ) -> Handle {
        Handle {
            call: CallSlot::new(Call::new(callback, args)),
            context,
            source_traceback: None,
            flags: AtomicU8::new(if threadsafe { THREADSAFE } else { 0 }),
            instrument_tag: AtomicU32::new(0),
        }
    }

    /// This handle, made safe to cancel from another thread while its callback runs.
    #[must_use]
    pub fn with_run_lock(self) -> Handle {
        self.flags.fetch_or(THREADSAFE, Relaxed);
        self
    }

    /// Whether a handle the loop has just run and holds the last reference to may be
    /// recycled: a plain `call_soon`/`call_soon_threadsafe` handle made outside debug mode (a
    /// timer's or a debug handle's fields are fixed at creation).
    pub(crate) fn is_recyclable_kind(&self) -> bool {
        !self.is_timer() && self.source_traceback.is_none()
    }

    /// Release the callback, arguments and context of a handle nobody else references, so
    /// it can be given a new call (`reuse`). Releasing them may run Python code; both cells
    /// are out of reach by then.
    pub(crate) fn release_for_reuse(&self, py: Python<'_>) {
        let call = self.call.take(py);
        let context = self.context.take(py);
        if let Some(call) = call {
            call.release(py);
        }
        drop(context.map(|c| c.into_bound(py)));
    }

    /// Make a released handle (see `release_for_reuse`) a new one for `callback(*args)` in
    /// `context`, as `Handle::new` would have (outside debug mode, not a timer).
    pub(crate) fn reuse(
        &self,
        py: Python<'_>,
        callback: Bound<'_, PyAny>,
        args: Option<Bound<'_, PyTuple>>,
        context: ContextSlot,
        threadsafe: bool,
    ) {
        debug_assert!(self.is_recyclable_kind());
        let old_call = self.call.put(py, Call::new(callback, args));
        let old_context = self.context.replace(py, context);
        // Not running, not cancelled, not a timer (see `is_recyclable_kind`).
        self.flags
            .store(if threadsafe { THREADSAFE } else { 0 }, Relaxed);
        self.instrument_tag.store(0, Relaxed);
        // Released by `release_for_reuse`: nothing Python to drop here.
        debug_assert!(old_call.is_none() && old_context.is_none());
        drop((old_call, old_context));
    }

    /// Another thread waits here while the callback runs (thread-safe handles only).
    fn wait_until_idle(&self, py: Python<'_>) {
        if let Some(lock) = self.run_lock() {
            lock.wait_until_idle(py);
        }
    }

    /// Whether this is a `TimerHandle`'s base (a subtype check costs more).
    #[inline]
    pub fn is_timer(&self) -> bool {
        self.flags.load(Relaxed) & TIMER != 0
    }

    /// Whether this timer is still in its loop's heap.
    #[inline]
    pub fn is_scheduled(&self) -> bool {
        self.flags.load(Relaxed) & SCHEDULED != 0
    }

    /// The heap let go of this timer.
    pub(crate) fn unschedule(&self) {
        self.flags.fetch_and(!SCHEDULED, Relaxed);
    }

    /// Mark the handle cancelled; whether it was not already. A timer's cancellation is
    /// counted by `TimerHandle::count_cancel`.
    pub fn cancel_handle(&self) -> bool {
        self.flags.fetch_or(CANCELLED, Relaxed) & CANCELLED == 0
    }

    /// `Handle.cancel()` from Python: cancel, then drop the callback and its arguments unless
    /// the handle was made in debug mode (where reprs and logs still show the callback).
    fn release_cancelled(&self, py: Python<'_>) {
        if self.source_traceback.is_none() {
            // Taken out first: dropping may run Python code that touches this handle.
            let released = self.call.take(py);
            drop(released);
        }
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.flags.load(Relaxed) & CANCELLED != 0
    }

    /// New references to the callback and its arguments, `None` once released; held outside
    /// the cell so the callback may cancel its own handle while it runs.
    fn call(&self, py: Python<'_>) -> Option<Call> {
        self.call.with(py, |c| c.map(|c| c.clone_ref(py)))
    }

    /// The run lock of a thread-safe handle.
    #[inline]
    fn run_lock(&self) -> Option<RunLock<'_>> {
        (self.flags.load(Relaxed) & THREADSAFE != 0).then(|| RunLock::new(&self.flags, RUNNING))
    }

    /// The callback and its arguments as `Bound` references (released without the
    /// thread-local check a `Py` drop makes), `None` once released.
    #[allow(clippy::type_complexity)]
    fn bound_call<'py>(
        &self,
        py: Python<'py>,
    ) -> Option<(Bound<'py, PyAny>, Option<Bound<'py, PyTuple>>)> {
        self.call.with(py, |c| {
            c.map(|c| {
                (
                    c.callback.bind(py).clone(),
                    c.args.as_ref().map(|a| a.bind(py).clone()),
                )
            })
        })
    }

    /// The callback, or Python's `None` once a cancel released it.
    pub fn callback<'py>(&self, py: Python<'py>) -> Bound<'py, PyAny> {
        self.call.with(py, |c| match c {
            Some(c) => c.callback.bind(py).clone(),
            None => py.None().into_bound(py),
        })
    }

    /// The address of the object the callback is bound to, as far as its layout says (see
    /// `callback_identity::bound_self_addr`; 0 once released), without taking a reference.
    #[inline]
    pub fn callback_owner_addr(&self, py: Python<'_>) -> usize {
        self.call.with(py, |c| {
            c.map_or(0, |c| {
                crate::callback_identity::bound_self_addr(c.callback.bind(py))
            })
        })
    }

    /// Run the callback in its context. Returns `Err` only for the exceptions that must stop
    /// the loop (KeyboardInterrupt, SystemExit); any other exception goes to the loop's
    /// exception handler, as `asyncio.Handle._run` does.
    pub fn run(slf: &Bound<'_, Handle>, event_loop: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let Some((callback, args)) = this.bound_call(py) else {
            return Ok(()); // cancelled and released: nothing to run
        };
        let report = |err| {
            report_callback_error(
                slf.as_any(),
                event_loop,
                err,
                this,
                &callback,
                args.as_ref(),
            )
        };
        let lock = this.run_lock();
        let running_before = lock.as_ref().map(RunLock::begin);
        let (ctx, lent) = match this.context.begin_run(py) {
            Ok(entered) => entered,
            Err(err) => {
                if let (Some(lock), Some(before)) = (&lock, running_before) {
                    lock.end(before);
                }
                return report(err);
            }
        };
        // SAFETY: `ctx` is a live object owned by this handle; the check only reads its type.
        let result = if unsafe { ffi::PyContext_CheckExact(ctx) } == 0 {
            // Not a contextvars.Context: the standard loop calls `context.run(callback, *args)`,
            // so an object with a `run` method works and anything else fails the same way.
            let mut call_args = vec![callback.clone()];
            call_args.extend(args.iter().flat_map(PyTupleMethods::iter));
            PyTuple::new(py, call_args).and_then(|call_args| {
                // SAFETY: `ctx` is the live object this handle owns (see above).
                unsafe { Bound::from_borrowed_ptr(py, ctx) }
                    .call_method1(intern!(py, "run"), call_args)
            })
        // SAFETY: `ctx` is a live Context owned by this handle for the whole call; one that is
        // already entered makes PyContext_Enter fail with an exception set, which we fetch.
        } else if unsafe { ffi::PyContext_Enter(ctx) } != 0 {
            Err(PyErr::fetch(py))
        } else {
            let r = match &args {
                None => callback.call0(),
                Some(args) => callback.call1(args),
            };
            // SAFETY: balances the successful PyContext_Enter above on the same thread.
            if unsafe { ffi::PyContext_Exit(ctx) } != 0 {
                PyErr::fetch(py).restore(py);
                r.and(Err(PyErr::fetch(py)))
            } else {
                r
            }
        };
        this.context.end_run(py, lent);
        if let (Some(lock), Some(before)) = (&lock, running_before) {
            lock.end(before);
        }
        match result {
            Ok(_) => Ok(()),
            Err(err) => report(err),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: a Handle is dropped either by its Python object's deallocation or by Rust
        // code that created it during a call from Python; both run attached to the
        // interpreter. Releasing through `Bound` decrefs directly, where a `Py` drop first
        // asks a thread-local whether the thread is attached.
        let py = unsafe { Python::assume_attached() };
        if let Some(call) = self.call.get_mut().take() {
            call.release(py);
        }
        self.context.release(py);
    }
}

fn report_callback_error(
    handle: &Bound<'_, PyAny>,
    event_loop: &Bound<'_, PyAny>,
    err: PyErr,
    this: &Handle,
    callback: &Bound<'_, PyAny>,
    args: Option<&Bound<'_, PyTuple>>,
) -> PyResult<()> {
    let py = handle.py();
    if crate::errors::is_fatal_to_loop(py, &err) {
        return Err(err);
    }
    let args = args.map_or_else(|| PyTuple::empty(py), Clone::clone);
    let source = support::format_callback_source(py, callback, &args, event_loop)?;
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {source}"))?;
    context.set_item("exception", err.into_value(py))?;
    context.set_item("handle", handle)?;
    if let Some(tb) = &this.source_traceback {
        context.set_item("source_traceback", tb)?;
    }
    event_loop.call_method1("call_exception_handler", (context,))?;
    Ok(())
}

#[pymethods]
impl Handle {
    fn cancel(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let this = slf.get();
        this.wait_until_idle(py);
        let timer = if this.is_timer() {
            slf.cast::<TimerHandle>().ok()
        } else {
            None
        };
        let counts = timer.as_ref().map(|t| &t.get().state.cancelled);
        if let Some(counts) = counts {
            if counts.traced.load(Relaxed) && this.is_scheduled() && !this.is_cancelled() {
                let cancel = (slf.as_ptr() as u64, crate::clock::monotonic_ns());
                counts
                    .traced_cancels
                    .with_borrow_mut(py, |v| v.push(cancel));
            }
        }
        if this.cancel_handle() && this.is_scheduled() {
            if let Some(counts) = counts {
                counts.in_heap.fetch_add(1, Relaxed);
                counts.total.add(1);
            }
        }
        this.release_cancelled(py);
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.wait_until_idle(py);
        self.is_cancelled()
    }

    /// A thread-safe handle is, to `isinstance`, the interpreter's `events._ThreadSafeHandle`
    /// (3.14+): asyncio's own tests, and code written for 3.14, check that, and a Rust type
    /// cannot subclass that pure-Python class. `isinstance` consults `__class__` only when the
    /// real type does not match, so this costs nothing on the paths that run handles.
    #[getter]
    fn __class__(slf: &Bound<'_, Self>) -> PyResult<Py<PyType>> {
        let py = slf.py();
        if slf.get().flags.load(Relaxed) & THREADSAFE != 0 {
            if let Some(cls) = threadsafe_handle::stdlib_type(py)? {
                return Ok(cls.clone_ref(py));
            }
        }
        Ok(slf.get_type().unbind())
    }

    fn get_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.context.get(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback(py).unbind()
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.call.with(py, |c| c.map(|c| c.args_tuple(py).unbind()))
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.context.get(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.is_scheduled()
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        support::handle_repr(slf.as_any())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the GC traverses with the GIL held and never while one of this handle's
        // accesses is active (none allocates, so none can start a collection).
        let py = unsafe { Python::assume_attached() };
        self.call.with(py, |call| -> Result<(), PyTraverseError> {
            if let Some(call) = call {
                visit.call(&call.callback)?;
                if let Some(args) = &call.args {
                    visit.call(args)?;
                }
            }
            Ok(())
        })?;
        if let Some(context) = self.context.context(py) {
            visit.call(context)?;
        }
        if let Some(tb) = &self.source_traceback {
            visit.call(tb)?;
        }
        Ok(())
    }

    /// tp_clear: a handle that is garbage lets go of its callback and arguments (as `cancel()`
    /// does), which may lead back to it or to its loop.
    fn __clear__(&self, py: Python<'_>) {
        drop(self.call.take(py));
    }
}

#[pyclass(module = "ferroloop", extends = Handle, frozen)]
pub struct TimerHandle {
    pub(crate) when: f64,
    state: TimerState,
}

impl TimerHandle {
    pub(crate) fn new(when: f64, state: TimerState) -> TimerHandle {
        TimerHandle { when, state }
    }
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        // hash(when), as asyncio.TimerHandle.
        self.when.into_pyobject(py)?.hash()
    }

    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.get().when, other.get().when);
        let equal = || -> PyResult<bool> {
            let (ha, hb) = (slf.as_super().get(), other.as_super().get());
            if a != b {
                return Ok(false);
            }
            // Released calls compare as `None`, like asyncio's cancelled handles.
            let same_call = match (ha.call(py), hb.call(py)) {
                (Some(ca), Some(cb)) => {
                    ca.callback.bind(py).eq(cb.callback.bind(py))?
                        && ca.args_tuple(py).eq(cb.args_tuple(py))?
                }
                (None, None) => true,
                _ => false,
            };
            Ok(same_call && ha.is_cancelled() == hb.is_cancelled())
        };
        let result = match op {
            CompareOp::Lt => a < b,
            CompareOp::Gt => a > b,
            CompareOp::Le => a < b || equal()?,
            CompareOp::Ge => a > b || equal()?,
            CompareOp::Eq => equal()?,
            CompareOp::Ne => !equal()?,
        };
        Ok(result.into_pyobject(py)?.to_owned().into_any().unbind())
    }
}
