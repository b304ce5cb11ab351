//! `GilCell`: interior mutability for loop state that is only touched while attached to the
//! interpreter.
//!
//! The loop's state (ready queue, timer heap, fd table) lives in `frozen` pyclasses so that
//! callbacks can re-enter the loop (`call_soon` from inside a callback) without PyO3 borrow
//! conflicts. Every access takes a `Python<'_>` token, and the module declares `gil_used`, so
//! the GIL serialises all threads that reach these cells. A `RefCell` inside still catches
//! re-entrancy: code must never call into Python (or drop a Python object) while a borrow is
//! held, because Python code may run another thread or re-enter the loop. Borrows are closures
//! (`with_borrow`, `with_borrow_mut`), so none outlives the expression that takes it: take
//! what is needed out, and call Python after.

use std::cell::RefCell;

use pyo3::gc::PyVisit;
use pyo3::{PyTraverseError, Python};

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through `with_borrow`/`with_borrow_mut`, which require a `Python<'_>` token,
// i.e. the calling thread is attached to the interpreter. The extension module is declared
// `gil_used = true`, so even free-threaded builds run with the GIL while ferroloop is
// imported: at most one thread is attached at a time, and a borrow is never held across a
// point where the GIL can be released (no Python calls, no `detach`) — so no two threads can
// touch the `RefCell` concurrently. `traverse` runs inside the GC's traverse, which holds the
// GIL too.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T: Default> Default for GilCell<T> {
    fn default() -> Self {
        GilCell::new(T::default())
    }
}

impl<T> GilCell<T> {
    pub const fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    /// Run `f` on a shared borrow that ends with it: the borrow cannot outlive one expression,
    /// so it cannot be held across a Python call made after it.
    #[inline]
    pub fn with_borrow<R>(&self, _py: Python<'_>, f: impl FnOnce(&T) -> R) -> R {
        f(&self.0.borrow())
    }

    /// Run `f` on an exclusive borrow that ends with it (see [`GilCell::with_borrow`]).
    #[inline]
    pub fn with_borrow_mut<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    /// Exclusive access through `&mut self`: no other borrow can exist.
    #[inline]
    pub fn get_mut(&mut self) -> &mut T {
        self.0.get_mut()
    }

    /// For `__traverse__`, which runs attached but gets no token: run `f` on the value unless
    /// a borrow is active (a collection can start inside one, from an allocation; the GC
    /// then misses these references for one pass, which is safe). `visit` proves the caller
    /// is a traverse.
    pub fn traverse(
        &self,
        visit: &PyVisit<'_>,
        f: impl FnOnce(&T, &PyVisit<'_>) -> Result<(), PyTraverseError>,
    ) -> Result<(), PyTraverseError> {
        match self.0.try_borrow() {
            Ok(value) => f(&value, visit),
            Err(_) => Ok(()),
        }
    }
}
