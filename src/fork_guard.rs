//! Telling a loop that it was inherited through `fork()`.
//!
//! A forked child shares its parent's epoll instance and eventfd: a registration the child
//! changes is changed for the parent, and a wake-up the child writes wakes the parent. So a
//! loop remembers the fork generation it was made in, and in a later one (a child) it refuses
//! to run or to watch fds, and forgets watchers without touching epoll.
//!
//! The generation is bumped by a `pthread_atfork` child handler, which runs in the child on
//! the thread that called fork, before any Python code. Reading it is one relaxed atomic load,
//! cheap enough for the paths that would otherwise act on the shared kernel objects.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Once;

use pyo3::exceptions::PyRuntimeError;
use pyo3::PyErr;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add, no allocation, no locks.
    GENERATION.fetch_add(1, Relaxed);
}

/// The fork generation of this process, installing the fork handler on first use.
pub fn current() -> u64 {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only performs an atomic add; the prepare and
        // parent handlers are absent. Registration failing (ENOMEM) leaves fork undetected,
        // which is today's behaviour, so its result is ignored.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    GENERATION.load(Relaxed)
}

/// Whether a loop created in generation `created` is now in a forked child.
#[inline]
pub fn is_inherited(created: u64) -> bool {
    GENERATION.load(Relaxed) != created
}

pub fn inherited_error() -> PyErr {
    PyRuntimeError::new_err(
        "this event loop was created before os.fork(): in the child it shares the parent's \
         epoll instance and cannot run; create a new event loop in the child",
    )
}
