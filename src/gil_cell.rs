//! `GilCell`: interior mutability for loop state that is only touched while attached to the
//! interpreter.
//!
//! The loop's state (ready queue, timer heap, fd table) lives in `frozen` pyclasses so that
//! callbacks can re-enter the loop (`call_soon` from inside a callback) without PyO3 borrow
//! conflicts. Every access takes a `Python<'_>` token, and the module declares `gil_used`, so
//! the GIL serialises all threads that reach these cells. A `RefCell` inside still catches
//! re-entrancy: code must never call into Python (or drop a Python object) while a borrow is
//! held, because Python code may run another thread or re-enter the loop.

use std::cell::{Ref, RefCell, RefMut};

use pyo3::Python;

pub struct GilCell<T>(RefCell<T>);

// SAFETY: every access goes through `borrow`/`borrow_mut`, which require a `Python<'_>` token,
// i.e. the calling thread is attached to the interpreter. The extension module is declared
// `gil_used = true`, so even free-threaded builds run with the GIL while ferroloop is
// imported: at most one thread is attached at a time, and a borrow is never held across a
// point where the GIL can be released (no Python calls, no `detach`) — so no two threads can
// touch the `RefCell` concurrently.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T: Default> Default for GilCell<T> {
    fn default() -> Self {
        GilCell::new(T::default())
    }
}

impl<T> GilCell<T> {
    pub fn new(value: T) -> Self {
        GilCell(RefCell::new(value))
    }

    #[inline]
    pub fn borrow<'a>(&'a self, _py: Python<'_>) -> Ref<'a, T> {
        self.0.borrow()
    }

    #[inline]
    pub fn borrow_mut<'a>(&'a self, _py: Python<'_>) -> RefMut<'a, T> {
        self.0.borrow_mut()
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

    /// Borrow without proving attachment; for the GC's traverse, which runs attached but gets
    /// no token. Fails instead of panicking when a borrow is already active.
    #[inline]
    pub fn try_borrow_unchecked(&self) -> Option<Ref<'_, T>> {
        self.0.try_borrow().ok()
    }
}
