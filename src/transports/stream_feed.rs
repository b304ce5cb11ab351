//! Feeding the standard library's `asyncio.StreamReader` straight from a stream transport.
//!
//! `asyncio.open_connection` and `start_server` give the transport an
//! `asyncio.StreamReaderProtocol` whose `data_received` calls `StreamReader.feed_data`, which
//! appends to the reader's `bytearray`, wakes the reader's waiter and pauses the transport at
//! twice the limit. When the protocol and its reader are exactly those classes, with their
//! methods as the standard library defines them (not subclassed, not patched on the class or
//! the instance), the transport does the same attribute reads and writes in the same order
//! itself: no Python frame for `data_received`, `_stream_reader`, `feed_data` and
//! `_wakeup_waiter`, and no intermediate `bytes` (a read goes into the reader's buffer, or
//! through the loop's scratch buffer). Anything unexpected — a reader gone or at EOF, an
//! attribute of another type — takes the ordinary `data_received` call, which then does what
//! the standard library does, errors included. Those four functions are the same from 3.11
//! to 3.15.
//!
//! Runs on the loop thread with the GIL held.

use pyo3::exceptions::PyNotImplementedError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyByteArray, PyType, PyWeakrefReference};

use crate::sys::nonblocking;

/// The standard library's stream classes and the functions the fast path stands in for, as
/// found at first use. `None` when they are not the ones `asyncio/streams.py` defines (patched
/// before ferroloop looked), so the fast path is never taken.
struct StdlibStreams {
    protocol_type: Py<PyType>,
    reader_type: Py<PyType>,
    /// `StreamReaderProtocol.data_received` and the `_stream_reader` property.
    protocol_members: [(&'static str, Py<PyAny>); 2],
    /// `StreamReader.feed_data` and `_wakeup_waiter`.
    reader_methods: [(&'static str, Py<PyAny>); 2],
}

const PROTOCOL_CLASS: &str = "StreamReaderProtocol";
const READER_CLASS: &str = "StreamReader";

/// `cls.name`, if it is defined in `asyncio/streams.py` as `class_name.name` (a property by its
/// getter).
fn stdlib_member(
    cls: &Bound<'_, PyType>,
    class_name: &str,
    name: &'static str,
) -> PyResult<Option<(&'static str, Py<PyAny>)>> {
    let member = cls.getattr(name)?;
    let py = cls.py();
    let function = if member.hasattr(intern!(py, "fget"))? {
        member.getattr(intern!(py, "fget"))?
    } else {
        member.clone()
    };
    let module = function.getattr(intern!(py, "__module__")).ok();
    let qualname = function.getattr(intern!(py, "__qualname__")).ok();
    let own = module.is_some_and(|m| m.eq("asyncio.streams").unwrap_or(false))
        && qualname.is_some_and(|q| q.eq(format!("{class_name}.{name}")).unwrap_or(false));
    Ok(own.then(|| (name, member.unbind())))
}

fn load_stdlib_streams(py: Python<'_>) -> PyResult<Option<StdlibStreams>> {
    let streams = py.import("asyncio.streams")?;
    let protocol_type = streams.getattr(PROTOCOL_CLASS)?.cast_into::<PyType>()?;
    let reader_type = streams.getattr(READER_CLASS)?.cast_into::<PyType>()?;
    let members = (
        stdlib_member(&protocol_type, PROTOCOL_CLASS, "data_received")?,
        stdlib_member(&protocol_type, PROTOCOL_CLASS, "_stream_reader")?,
        stdlib_member(&reader_type, READER_CLASS, "feed_data")?,
        stdlib_member(&reader_type, READER_CLASS, "_wakeup_waiter")?,
    );
    let (Some(data_received), Some(stream_reader), Some(feed_data), Some(wakeup_waiter)) = members
    else {
        return Ok(None);
    };
    Ok(Some(StdlibStreams {
        protocol_type: protocol_type.unbind(),
        reader_type: reader_type.unbind(),
        protocol_members: [data_received, stream_reader],
        reader_methods: [feed_data, wakeup_waiter],
    }))
}

fn stdlib_streams(py: Python<'_>) -> Option<&StdlibStreams> {
    static STREAMS: PyOnceLock<Option<StdlibStreams>> = PyOnceLock::new();
    STREAMS
        .get_or_init(py, || load_stdlib_streams(py).ok().flatten())
        .as_ref()
}

/// Whether each of `members` is still what `obj.name` finds on `cls` and, for a method, on
/// `obj` itself (not replaced on the class or assigned to the instance).
fn unpatched(
    obj: &Bound<'_, PyAny>,
    cls: &Bound<'_, PyType>,
    members: &[(&'static str, Py<PyAny>)],
    methods: bool,
) -> PyResult<bool> {
    let py = obj.py();
    for (name, original) in members {
        if !cls.getattr(*name)?.is(original) {
            return Ok(false);
        }
        if methods {
            let bound = obj.getattr(*name)?;
            let function = bound.getattr(intern!(py, "__func__")).ok();
            if !function.is_some_and(|f| f.is(original)) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether the transport may feed `protocol`'s reader itself (decided once per protocol: its
/// class, its methods, and its reader's).
pub fn feeds_stdlib_reader(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = protocol.py();
    let Some(stdlib) = stdlib_streams(py) else {
        return Ok(false);
    };
    let protocol_type = stdlib.protocol_type.bind(py);
    if !protocol.get_type().is(protocol_type) {
        return Ok(false);
    }
    let [data_received, stream_reader] = &stdlib.protocol_members;
    if !unpatched(
        protocol,
        protocol_type,
        std::slice::from_ref(data_received),
        true,
    )? || !unpatched(
        protocol,
        protocol_type,
        std::slice::from_ref(stream_reader),
        false,
    )? {
        return Ok(false);
    }
    let reader = protocol.getattr(intern!(py, "_stream_reader"))?;
    let reader_type = stdlib.reader_type.bind(py);
    Ok(reader.get_type().is(reader_type)
        && unpatched(&reader, reader_type, &stdlib.reader_methods, true)?)
}

/// The reader `data_received` would feed and its buffer, when the fast path applies to this
/// read: the protocol still has its reader, an exact `StreamReader` not at EOF, whose buffer
/// is a `bytearray`. `None` sends the read through `data_received`.
pub fn reader_to_feed<'py>(
    protocol: &Bound<'py, PyAny>,
) -> Option<(Bound<'py, PyAny>, Bound<'py, PyByteArray>)> {
    let py = protocol.py();
    let stdlib = stdlib_streams(py)?;
    let weak = protocol
        .getattr(intern!(py, "_stream_reader_wr"))
        .ok()?
        .cast_into_exact::<PyWeakrefReference>()
        .ok()?;
    let reader = weak.upgrade()?;
    if !reader.get_type().is(stdlib.reader_type.bind(py)) {
        return None;
    }
    // `feed_data` asserts `not self._eof`; at EOF the call shows the assertion (or, under -O,
    // what follows it).
    if !reader
        .getattr(intern!(py, "_eof"))
        .ok()?
        .is(PyBool::new(py, false))
    {
        return None;
    }
    let buffer = reader
        .getattr(intern!(py, "_buffer"))
        .ok()?
        .cast_into_exact::<PyByteArray>()
        .ok()?;
    Some((reader, buffer))
}

/// Receive into the end of `buffer` directly: `queued` bytes are waiting (a large read). The
/// buffer keeps its length when nothing was read. `None` when the buffer cannot grow (a
/// memoryview of it is alive, or memory is short): nothing was read, and the read goes
/// through the scratch buffer, to fail where `bytearray.extend` would.
pub fn recv_into_end(
    buffer: &Bound<'_, PyByteArray>,
    fd: i32,
    queued: usize,
) -> Option<PyResult<Option<usize>>> {
    let start = buffer.len();
    buffer.resize(start + queued).ok()?;
    // SAFETY: the bytearray has just been resized to `start + queued` bytes, so its data
    // pointer offset by `start` addresses `queued` writable bytes; no Python code runs (and
    // so nothing can resize or free it) before recv returns.
    let received = unsafe { nonblocking::recv_raw(fd, buffer.data().add(start).cast(), queued) };
    let kept = match &received {
        Ok(Some(n)) => start + n,
        _ => start,
    };
    Some(
        buffer
            .resize(kept)
            .and_then(|()| received.map_err(crate::errors::os_error)),
    )
}

/// Append `data` to `buffer`, as `bytearray.extend(data)`.
pub fn append(buffer: &Bound<'_, PyByteArray>, data: &[u8]) -> PyResult<()> {
    let start = buffer.len();
    buffer.resize(start + data.len())?;
    // SAFETY: the bytearray now holds `start + data.len()` bytes; `data` is the loop's scratch
    // buffer or another Rust slice, never the bytearray's own storage, so the ranges do not
    // overlap; no Python code runs between the resize and the copy.
    unsafe {
        std::ptr::copy_nonoverlapping(data.as_ptr(), buffer.data().add(start), data.len());
    }
    Ok(())
}

/// The rest of `StreamReader.feed_data` once the data is in the buffer: `_wakeup_waiter()`,
/// then pause the transport when the buffer holds more than twice the limit.
pub fn after_feed(reader: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = reader.py();
    let waiter = reader.getattr(intern!(py, "_waiter"))?;
    if !waiter.is_none() {
        reader.setattr(intern!(py, "_waiter"), py.None())?;
        if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
    }
    let transport = reader.getattr(intern!(py, "_transport"))?;
    if transport.is_none() || reader.getattr(intern!(py, "_paused"))?.is_truthy()? {
        return Ok(());
    }
    let limit = reader.getattr(intern!(py, "_limit"))?;
    let twice_limit = 2_i64.into_pyobject(py)?.mul(limit)?;
    let buffered = reader.getattr(intern!(py, "_buffer"))?.len()?;
    if !buffered.into_pyobject(py)?.gt(twice_limit)? {
        return Ok(());
    }
    match transport.call_method0(intern!(py, "pause_reading")) {
        Ok(_) => reader.setattr(intern!(py, "_paused"), true),
        Err(err) if err.is_instance_of::<PyNotImplementedError>(py) => {
            reader.setattr(intern!(py, "_transport"), py.None())
        }
        Err(err) => Err(err),
    }
}
