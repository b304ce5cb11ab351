//! Turning OS errors into the Python exceptions the standard library raises.
//!
//! `OSError(errno, strerror)` lets Python pick the subclass (BlockingIOError,
//! ConnectionResetError, PermissionError, ...) and fills in `errno`, `strerror` and the
//! `[Errno N] ...` message, exactly as `socket` and `select` do. PyO3's own `io::Error`
//! conversion picks the subclass but leaves `errno` unset, which breaks code that checks it.

use std::ffi::CStr;
use std::io;

use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::{PyErr, Python};

pub fn os_error(err: io::Error) -> PyErr {
    let Some(errno) = err.raw_os_error() else {
        return err.into();
    };
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is a writable buffer of the given length; the XSI strerror_r that the libc
    // crate binds writes a NUL-terminated message into it and returns 0 on success.
    let message = if unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) } == 0 {
        // SAFETY: on success the buffer holds a NUL-terminated string.
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    } else {
        format!("Unknown error {errno}")
    };
    PyOSError::new_err((errno, message))
}

/// Whether an exception must leave the loop instead of reaching its exception handler
/// (`KeyboardInterrupt`, `SystemExit`: the stdlib's `except (SystemExit, KeyboardInterrupt):
/// raise` before every `except BaseException`).
pub fn is_fatal_to_loop(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}
