//! The OS layer: every system call the core makes goes through this module, as mio's `sys/`.
//! Above it, nothing calls `libc` for I/O; below it, each file wraps one OS interface.
//!
//! - [`event`]: what the loop sees of readiness (`Interest`, `Event`), whatever the backend;
//! - [`epoll`] and [`eventfd`] — Linux: the poller and the waker. A kqueue backend for macOS
//!   and the BSDs is a `kqueue.rs` (with a pipe or `EVFILT_USER` waker) exporting the same
//!   `Poller` and `Waker`, chosen by the `cfg` below; nothing above this module changes;
//! - [`clock`]: the monotonic clock;
//! - [`memory`]: an anonymous mapping committed ahead of its writer (the trace ring's);
//! - [`nonblocking`]: non-blocking reads and writes on sockets, pipes and character devices (recv,
//!   send, sendmsg, read, writev), `shutdown`, `FIONREAD`, and the Linux pipe sizing;
//! - [`datagram`]: `sendto`/`recvfrom` and the socket addresses they carry (the one file here
//!   that touches Python objects: addresses convert as the `socket` module converts them).
//!
//! Every call goes through the `libc` crate's dynamic symbols (not raw syscalls), so a fault
//! injection shim loaded with `LD_PRELOAD` sees each of them. Errors are checked in one
//! place: [`check`] (mio's `syscall!`, as a function, so each `unsafe` block and its
//! `SAFETY` comment stay at the call) and [`retry_nonblocking`] for the calls that may be
//! interrupted or find nothing to do.
//!
//! Any thread; no Python, no GIL needed.

use std::io;

pub mod clock;
pub mod datagram;
pub mod event;
pub mod memory;
pub mod nonblocking;

#[cfg(target_os = "linux")]
pub mod epoll;
#[cfg(target_os = "linux")]
pub mod eventfd;

#[cfg(target_os = "linux")]
pub use epoll::Poller;
pub use event::{Event, Interest, MAX_TIMEOUT, WAKER_TOKEN};
#[cfg(target_os = "linux")]
pub use eventfd::Waker;

/// A C return value whose -1 means "failed, see errno".
pub trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

impl IsMinusOne for i32 {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

impl IsMinusOne for isize {
    fn is_minus_one(self) -> bool {
        self == -1
    }
}

/// The result of a libc call: `Err(errno)` for -1, the value otherwise.
#[inline]
pub fn check<T: IsMinusOne>(result: T) -> io::Result<T> {
    if result.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Run a non-blocking call until it is not interrupted: `Ok(Some(n))` for what it did,
/// `Ok(None)` for "would block" (EAGAIN), which is no error to a non-blocking fd and costs no
/// exception in the common "nothing to read yet" case.
#[inline]
pub fn retry_nonblocking(mut call: impl FnMut() -> isize) -> io::Result<Option<usize>> {
    loop {
        match check(call()) {
            Ok(n) => return Ok(Some(n as usize)),
            Err(err) => match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(err),
            },
        }
    }
}
