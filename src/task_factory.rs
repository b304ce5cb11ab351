//! Fast paths for `create_future` and `create_task`: asyncio's own C `Future` and `Task`,
//! constructed from Rust.
//!
//! Runs on the loop thread with the GIL held. Only the common case is handled here — no task
//! factory installed, debug mode off. Everything else goes to the standard library's
//! `create_task` (borrowed by the Python `Loop` as `_create_task_stdlib`), whose exact
//! behaviour differs between Python versions (3.14 passes `**kwargs` through to the factory).
//!
//! As the standard loop, the classes are looked up in their modules at every call (a dict
//! lookup): a program or test that replaces `asyncio.tasks.Task` / `asyncio.futures.Future`
//! (asyncio's own tests swap in the pure-Python ones) gets its own class.

use pyo3::exceptions::PyAttributeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyString, PyTuple};

static FUTURES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();
static TASKS: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// `module.name` as it is now, through the module's dict (imported once).
fn current<'py>(
    py: Python<'py>,
    cell: &PyOnceLock<Py<PyDict>>,
    module: &str,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    let namespace = cell.get_or_try_init(py, || -> PyResult<_> {
        Ok(py.import(module)?.dict().unbind())
    })?;
    namespace
        .bind(py)
        .get_item(name)?
        .ok_or_else(|| PyAttributeError::new_err(format!("module {module} has no {name}")))
}

pub fn create_future(event_loop: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    let future = current(py, &FUTURES, "asyncio.futures", intern!(py, "Future"))?;
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "loop"), event_loop)?;
    Ok(future.call((), Some(&kwargs))?.unbind())
}

/// `Task(coro, loop=event_loop, name=..., context=..., **extra)`.
pub fn create_task(
    event_loop: &Bound<'_, PyAny>,
    coro: &Bound<'_, PyAny>,
    name: Option<&Bound<'_, PyAny>>,
    context: Option<&Bound<'_, PyAny>>,
    extra: Option<&Bound<'_, PyDict>>,
) -> PyResult<Py<PyAny>> {
    let py = event_loop.py();
    let task = current(py, &TASKS, "asyncio.tasks", intern!(py, "Task"))?;
    let kwargs = match extra {
        Some(extra) => extra.copy()?,
        None => PyDict::new(py),
    };
    kwargs.set_item(intern!(py, "loop"), event_loop)?;
    if let Some(name) = name {
        kwargs.set_item(intern!(py, "name"), name)?;
    }
    if let Some(context) = context {
        kwargs.set_item(intern!(py, "context"), context)?;
    }
    Ok(task
        .call(PyTuple::new(py, [coro])?, Some(&kwargs))?
        .unbind())
}
