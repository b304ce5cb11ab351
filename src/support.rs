//! Calls from Rust into `ferroloop._support` and `ferroloop._instrument`: Python helpers for
//! cold paths only (reprs, debug-mode stacks and checks, log messages, naming what the
//! instruments saw), looked up once and cached.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyString, PyTuple};

const MODULE: &str = "ferroloop._support";
const INSTRUMENT_MODULE: &str = "ferroloop._instrument";

macro_rules! helper {
    ($py:expr, $name:literal) => {
        helper!($py, MODULE, $name)
    };
    ($py:expr, $module:expr, $name:literal) => {{
        static CELL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        CELL.import($py, $module, $name)
    }};
}

/// The stack where a handle was created (debug mode only).
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(helper!(py, "extract_stack")?.call0()?.unbind())
}

pub fn format_callback_source(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    event_loop: &Bound<'_, PyAny>,
) -> PyResult<String> {
    helper!(py, "format_callback_source")?
        .call1((callback, args, event_loop))?
        .extract()
}

pub fn handle_repr(handle: &Bound<'_, PyAny>) -> PyResult<String> {
    helper!(handle.py(), "handle_repr")?
        .call1((handle,))?
        .extract()
}

/// Debug-mode checks the standard loop makes in `call_soon`/`call_at`: the caller is on the
/// loop's thread (unless `threadsafe`) and the callback is a plain callable.
pub fn debug_checks(
    event_loop: &Bound<'_, PyAny>,
    callback: &Bound<'_, PyAny>,
    method: &str,
    threadsafe: bool,
) -> PyResult<()> {
    helper!(event_loop.py(), "debug_checks")?.call1((event_loop, callback, method, threadsafe))?;
    Ok(())
}

pub fn log_slow_callback(handle: &Bound<'_, PyAny>, seconds: f64) -> PyResult<()> {
    helper!(handle.py(), "log_slow_callback")?.call1((handle, seconds))?;
    Ok(())
}

/// `selectors._fileobj_to_fd` semantics: an int, or an object whose `fileno()` gives one.
pub fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<i32> {
    helper!(obj.py(), "fileobj_to_fd")?.call1((obj,))?.extract()
}

/// `logger.debug("%r: %s", transport, message, exc_info=exc)` (debug mode only).
pub fn log_transport_error(
    transport: &Bound<'_, PyAny>,
    message: &str,
    exc: &Bound<'_, PyAny>,
) -> PyResult<()> {
    helper!(transport.py(), "log_transport_error")?.call1((transport, message, exc))?;
    Ok(())
}

/// `logger.debug("%r <what>", transport)` (debug mode only).
pub fn log_transport_debug(transport: &Bound<'_, PyAny>, what: &str) -> PyResult<()> {
    helper!(transport.py(), "log_transport_debug")?.call1((transport, what))?;
    Ok(())
}

pub fn log_warning(py: Python<'_>, message: &str) -> PyResult<()> {
    helper!(py, "log_warning")?.call1((message,))?;
    Ok(())
}

/// The `TypeError` the interpreter's own socket transport raises for `write(data)` of a
/// non-bytes `data` (its wording changed between CPython releases).
pub fn write_type_error(data: &Bound<'_, PyAny>) -> PyErr {
    match helper!(data.py(), "write_type_error").and_then(|f| f.call1((data,))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(err) => err,
    }
}

/// Whether `code` is asyncio's or ferroloop's own (a task's creation site is the first frame
/// outside them).
pub fn is_internal_code(code: &Bound<'_, PyAny>) -> PyResult<bool> {
    helper!(code.py(), INSTRUMENT_MODULE, "is_internal_code")?
        .call1((code,))?
        .is_truthy()
}

/// A creation site as `task_identity` gave it, made readable (`file:line in function`).
pub fn format_site<'py>(site: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    helper!(site.py(), INSTRUMENT_MODULE, "format_site")?.call1((site,))
}

/// A readable name for what a callback calls (`Task.task_wakeup`, `count`, ...).
pub fn callback_label<'py>(callback: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    Ok(helper!(callback.py(), INSTRUMENT_MODULE, "callback_label")?
        .call1((callback,))?
        .cast_into::<PyString>()?)
}

/// The blocking watchdog found the loop stuck for `elapsed` seconds in its current callback.
pub fn report_blocked(
    event_loop: &Bound<'_, PyAny>,
    handle: &Bound<'_, PyAny>,
    elapsed: f64,
) -> PyResult<()> {
    helper!(event_loop.py(), INSTRUMENT_MODULE, "report_blocked")?
        .call1((event_loop, handle, elapsed))?;
    Ok(())
}

/// A callback the watchdog reported returned after `elapsed` seconds in all.
pub fn report_unblocked(
    event_loop: &Bound<'_, PyAny>,
    handle: &Bound<'_, PyAny>,
    elapsed: f64,
) -> PyResult<()> {
    helper!(event_loop.py(), INSTRUMENT_MODULE, "report_unblocked")?
        .call1((event_loop, handle, elapsed))?;
    Ok(())
}

/// Whether the interpreter's socket transport, when a closing transport's buffer drains,
/// counts the connection as lost before calling `_call_connection_lost` (gh-156512, 3.14+).
pub fn stdlib_counts_lost_on_drained_close(py: Python<'_>) -> PyResult<bool> {
    static COUNTS: PyOnceLock<bool> = PyOnceLock::new();
    COUNTS
        .get_or_try_init(py, || {
            helper!(py, "stdlib_counts_lost_on_drained_close")?
                .call0()?
                .extract()
        })
        .copied()
}
