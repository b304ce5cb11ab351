//! The write side every writing transport shares, written once (as CPython's
//! `_SelectorTransport` and `_FlowControlMixin`, and uvloop's `UVBaseTransport`, hold it once):
//! send from the caller's buffer at once when nothing is queued and buffer only the unsent
//! tail, `writelines`, counting writes to a lost connection, the writer watcher, flow control
//! (`pause_writing`/`resume_writing` at the high and low water marks) and draining the buffer
//! from the writer. `StreamCore` (sockets) and `WritePipeCore` (pipes) implement [`WriteCore`]
//! to say how their fd is written and where their stdlib models differ; everything else is
//! here.
//!
//! Loop thread, GIL held. Every function takes what it needs out of the core's `GilCell` and
//! releases the borrow before calling Python (the protocol may write from `resume_writing`).

use std::os::fd::RawFd;

use pyo3::exceptions::{PyOverflowError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::pyclass::boolean_struct::True;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyInt, PyMemoryView};
use pyo3::PyClass;

use crate::buffers::ByteView;
use crate::errors::{is_fatal_to_loop, os_error};
use crate::fd_watchers::Direction;
use crate::support;
use crate::sys::nonblocking::MAX_IOVECS;
use crate::trace::IoKind;
use crate::write_buffer::WriteBuffer;

use super::common::{self, Connection, TransportCore};

pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// After this many writes to a lost connection, each further one logs a warning.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A write side's flow control (`_FlowControlMixin`): the water marks and whether the protocol
/// has been told to pause.
pub struct FlowControl {
    high_water: usize,
    low_water: usize,
    paused: bool,
    /// (low, high) as the caller's values made them, for `get_write_buffer_limits`: the
    /// standard transport reports the objects it computed (ints beyond 64 bits, floats).
    as_set: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl Default for FlowControl {
    fn default() -> Self {
        FlowControl {
            high_water: DEFAULT_HIGH_WATER,
            low_water: DEFAULT_HIGH_WATER / 4,
            paused: false,
            as_set: None,
        }
    }
}

impl FlowControl {
    /// True when a buffer of `size` bytes must pause the protocol now (it was not paused).
    pub fn should_pause(&mut self, size: usize) -> bool {
        if size <= self.high_water || self.paused {
            return false;
        }
        self.paused = true;
        true
    }

    /// True when a buffer of `size` bytes must resume the paused protocol now.
    pub fn should_resume(&mut self, size: usize) -> bool {
        if !(self.paused && size <= self.low_water) {
            return false;
        }
        self.paused = false;
        true
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The marks the buffer size is compared with: (low, high).
    pub fn limits(&self) -> (usize, usize) {
        (self.low_water, self.high_water)
    }

    /// `get_write_buffer_limits()`: (low, high) as they were set, or the byte counts.
    pub fn reported(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        if let Some((low, high)) = &self.as_set {
            return Ok((low.clone_ref(py), high.clone_ref(py)));
        }
        Ok((
            self.low_water.into_pyobject(py)?.into_any().unbind(),
            self.high_water.into_pyobject(py)?.into_any().unbind(),
        ))
    }

    /// Install marks made by [`write_buffer_limits`]. Returns the objects they replace, for
    /// the caller to drop once its borrow has ended (dropping may run Python code).
    #[must_use]
    pub fn set_limits(&mut self, marks: WaterMarks) -> Option<(Py<PyAny>, Py<PyAny>)> {
        self.high_water = marks.high;
        self.low_water = marks.low;
        self.as_set.replace(marks.as_set)
    }
}

/// Water marks checked by [`write_buffer_limits`]: byte counts, and (low, high) as given.
pub struct WaterMarks {
    high: usize,
    low: usize,
    as_set: (Py<PyAny>, Py<PyAny>),
}

/// What a writing transport holds besides its [`Connection`].
#[derive(Default)]
pub struct WriteSide {
    /// What the fd has not taken yet.
    pub buffer: WriteBuffer,
    pub flow: FlowControl,
    /// The writer watcher is installed (it can be with an empty buffer: a write from
    /// `resume_writing` inside `_write_ready`).
    pub writer_installed: bool,
}

/// A transport core with a write side: how its fd is written and where its stdlib model
/// differs from the others.
pub trait WriteCore: TransportCore + PyClass<Frozen = True> + Sync {
    /// `_fatal_error`'s message for a failed write.
    const WRITE_ERROR: &'static str;
    /// Logged for each write to a lost connection past the threshold.
    const LOST_WRITE_WARNING: &'static str;
    /// The stdlib pipe drops (and counts) a write once `close()` was called; a socket still
    /// queues it behind what is buffered.
    const CLOSING_DROPS_WRITES: bool;
    /// The stdlib socket resumes the protocol once the buffer is down to the low mark; the
    /// pipe only once it is empty.
    const RESUMES_WHILE_DRAINING: bool;

    /// Run `f` on the connection and the write side; the borrow ends with `f`.
    fn with_write_side<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut Connection, &mut WriteSide) -> R,
    ) -> R;

    /// The stdlib's check of `write()`'s argument (its exception and message).
    fn check_data_type(data: &Bound<'_, PyAny>) -> PyResult<()>;

    /// The state checks `write()`/`writelines()` make before anything else.
    fn check_writable(&self, _py: Python<'_>, _what: &str) -> PyResult<()> {
        Ok(())
    }

    /// Whether the interpreter's model transport defines a `writelines` of its own (the socket
    /// transport from 3.12); otherwise it is `WriteTransport.writelines`, one `write()` of
    /// `b''.join(list_of_data)`.
    fn stdlib_has_own_writelines(py: Python<'_>) -> PyResult<bool>;

    /// The fd to write, after whatever check says it is still the transport's.
    fn writable_fd(&self, py: Python<'_>) -> PyResult<RawFd>;

    /// One non-blocking write of up to [`MAX_IOVECS`] slices; `None`: it would block.
    fn write_fd(fd: RawFd, slices: &[&[u8]]) -> std::io::Result<Option<usize>>;

    /// `n` bytes were written (statistics, trace, pipe sizing).
    fn wrote(&self, py: Python<'_>, n: usize);

    /// A write failed: `_fatal_error` with [`Self::WRITE_ERROR`] (the pipe counts the
    /// connection lost first, as the stdlib's does).
    fn write_failed(&self, py: Python<'_>, err: PyErr) -> PyResult<()>;

    /// `_write_ready`'s body (3.12+'s socket `writelines` calls it too).
    fn flush_buffer(&self, py: Python<'_>) -> PyResult<()>;
}

/// `isinstance(data, (bytes, bytearray, memoryview))`: what the stdlib transports' `write`
/// accepts.
pub fn is_bytes_like(data: &Bound<'_, PyAny>) -> bool {
    data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
}

/// The stdlib class `module.class` defines `name` itself (not inherited).
pub fn stdlib_defines(py: Python<'_>, module: &str, class: &str, name: &str) -> PyResult<bool> {
    py.import(module)?
        .getattr(class)?
        .getattr(intern!(py, "__dict__"))?
        .contains(name)
}

/// Cache of [`stdlib_defines`] for one core type.
pub fn cached_stdlib_defines(
    cell: &PyOnceLock<bool>,
    py: Python<'_>,
    (module, class, name): (&str, &str, &str),
) -> PyResult<bool> {
    cell.get_or_try_init(py, || stdlib_defines(py, module, class, name))
        .copied()
}

pub fn add_writer<C: WriteCore>(slf: &Bound<'_, C>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    common::watch(
        slf.as_any(),
        this,
        Direction::Write,
        intern!(py, "_write_ready"),
    )?;
    this.with_write_side(py, |_, side| side.writer_installed = true);
    Ok(())
}

pub fn remove_writer<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    this.with_write_side(py, |_, side| side.writer_installed = false);
    common::unwatch(this, py, Direction::Write)
}

/// Call `protocol.pause_writing()`/`resume_writing()`; a failure goes to the exception
/// handler, as `_FlowControlMixin` does. (Any transport with flow control: datagrams too.)
pub fn notify_flow<C: TransportCore>(this: &C, py: Python<'_>, pause: bool) -> PyResult<()> {
    let (method, message) = if pause {
        (
            intern!(py, "pause_writing"),
            "protocol.pause_writing() failed",
        )
    } else {
        (
            intern!(py, "resume_writing"),
            "protocol.resume_writing() failed",
        )
    };
    let Some(protocol) =
        this.with_connection(py, |conn| conn.protocol.as_ref().map(|p| p.clone_ref(py)))
    else {
        return Ok(());
    };
    if let Err(err) = protocol.bind(py).call_method0(method) {
        if is_fatal_to_loop(py, &err) {
            return Err(err);
        }
        let exc = err.into_value(py).into_any();
        common::report(this, py, message, exc.bind(py))?;
    }
    Ok(())
}

/// `_maybe_pause_protocol`.
pub fn maybe_pause_protocol<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    if this.with_write_side(py, |_, side| side.flow.should_pause(side.buffer.len())) {
        this.record_flow(py, IoKind::PauseWriting);
        notify_flow(this, py, true)?;
    }
    Ok(())
}

/// `_maybe_resume_protocol`.
pub fn maybe_resume_protocol<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<()> {
    if this.with_write_side(py, |_, side| side.flow.should_resume(side.buffer.len())) {
        this.record_flow(py, IoKind::ResumeWriting);
        notify_flow(this, py, false)?;
    }
    Ok(())
}

/// Count a write to a lost (for pipes: closing) connection; true if it must be dropped.
pub fn drop_write_if_lost<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<bool> {
    let dropped = this.with_write_side(py, |conn, _| {
        if !(conn.conn_lost.is_lost() || (C::CLOSING_DROPS_WRITES && conn.closing)) {
            return None;
        }
        let warn = conn.conn_lost.count() >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
        conn.conn_lost.record();
        Some(warn)
    });
    match dropped {
        None => Ok(false),
        Some(warn) => {
            if warn {
                support::log_warning(py, C::LOST_WRITE_WARNING)?;
            }
            Ok(true)
        }
    }
}

/// Send `views` now if nothing is queued, buffer what the fd did not take, and install the
/// writer if data is left over. With an empty buffer and the writer installed (a write from
/// `resume_writing` inside `_write_ready`) it is sent at once too, as the stdlib's check is
/// the buffer alone.
pub fn send_or_buffer<C: WriteCore>(slf: &Bound<'_, C>, views: &[ByteView]) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    let mut sent = 0usize;
    let (send_now, needs_writer) = this.with_write_side(py, |_, side| {
        let empty = side.buffer.is_empty();
        (empty, empty && !side.writer_installed)
    });
    if send_now {
        let outcome = this.writable_fd(py).and_then(|fd| {
            let written = if let [view] = views {
                C::write_fd(fd, &[view.as_slice()])
            } else {
                let slices: Vec<&[u8]> = views.iter().map(ByteView::as_slice).collect();
                C::write_fd(fd, &slices)
            };
            written.map_err(os_error)
        });
        match outcome {
            Ok(Some(n)) => {
                sent = n;
                this.wrote(py, n);
            }
            Ok(None) => {}
            Err(err) => return this.write_failed(py, err),
        }
        if sent == views.iter().map(ByteView::len).sum::<usize>() {
            return Ok(());
        }
    }
    // The watcher first, as the standard transports do: if epoll refuses it, write() raises
    // and nothing is buffered, rather than buffering data no watcher will send.
    if needs_writer {
        add_writer(slf)?;
    }
    this.with_write_side(py, |_, side| {
        let mut skip = sent;
        for view in views {
            let slice = view.as_slice();
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            side.buffer.push(&slice[skip..]);
            skip = 0;
        }
    });
    maybe_pause_protocol(this, py)
}

/// `write(data)`: the stdlib's checks in its order, then send or buffer.
pub fn write<C: WriteCore>(slf: &Bound<'_, C>, data: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    C::check_data_type(data)?;
    this.check_writable(py, "write")?;
    let view = match ByteView::new(data) {
        Ok(view) => view,
        // A memoryview that is not C-contiguous: the stdlib's `sock.send`/`os.write` fails
        // with BufferError, a fatal write error (a released one fails `not data`).
        Err(err) => {
            if data.len()? == 0 || drop_write_if_lost(this, py)? {
                return Ok(());
            }
            return this.write_failed(py, err);
        }
    };
    if view.is_empty() || drop_write_if_lost(this, py)? {
        return Ok(());
    }
    send_or_buffer(slf, std::slice::from_ref(&view))
}

/// `writelines(list_of_data)`, as the interpreter's model transport has it: 3.12+'s socket
/// transport returns for a falsy argument, drops (and counts) the call on a lost connection
/// before looking at the items, and appends to what is buffered; `WriteTransport.writelines`
/// (3.11's socket, every pipe) joins the items — a TypeError for a non-bytes one, before
/// anything is written — and writes the result once. Either way the items go out as one
/// vectored write, not joined.
pub fn writelines<C: WriteCore>(
    slf: &Bound<'_, C>,
    list_of_data: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = slf.py();
    let this = slf.get();
    this.check_writable(py, "writelines")?;
    let own_writelines = C::stdlib_has_own_writelines(py)?;
    if own_writelines && (!list_of_data.is_truthy()? || drop_write_if_lost(this, py)?) {
        return Ok(());
    }
    let mut views = Vec::new();
    for (i, item) in list_of_data.try_iter()?.enumerate() {
        let item = item?;
        let view = ByteView::new(&item).map_err(|_| {
            let name = item
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!(
                "sequence item {i}: expected a bytes-like object, {name} found"
            ))
        })?;
        if !view.is_empty() {
            views.push(view);
        }
    }
    if own_writelines && !this.with_write_side(py, |_, side| side.buffer.is_empty()) {
        // 3.12+ appends to what is already buffered and tries to send it all now.
        this.with_write_side(py, |_, side| {
            for view in &views {
                side.buffer.push(view.as_slice());
            }
        });
        this.flush_buffer(py)?;
        let (pending, installed) = this.with_write_side(py, |_, side| {
            (!side.buffer.is_empty(), side.writer_installed)
        });
        if pending {
            if !installed {
                add_writer(slf)?;
            }
            maybe_pause_protocol(this, py)?;
        }
        return Ok(());
    }
    if views.is_empty() || (!own_writelines && drop_write_if_lost(this, py)?) {
        return Ok(());
    }
    send_or_buffer(slf, &views)
}

/// How a [`flush`] ended.
pub enum Flushed {
    /// The write failed; the buffer is cleared and the writer removed. The caller reports.
    Failed(PyErr),
    /// Data is left in the buffer (the writer stays installed).
    Pending,
    /// The buffer is empty and the writer removed.
    Drained,
}

/// `_write_ready`'s shared part: one vectored write of the front of the buffer, the
/// protocol resumed at the model's point, the writer removed once drained.
pub fn flush<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<Flushed> {
    let outcome = this.writable_fd(py).and_then(|fd| {
        this.with_write_side(py, |_, side| {
            C::write_fd(fd, &side.buffer.front_slices(MAX_IOVECS))
        })
        .map_err(os_error)
    });
    match outcome {
        Err(err) => {
            this.with_write_side(py, |_, side| side.buffer.clear());
            remove_writer(this, py)?;
            return Ok(Flushed::Failed(err));
        }
        Ok(None) => {}
        Ok(Some(n)) => {
            this.wrote(py, n);
            this.with_write_side(py, |_, side| side.buffer.consume(n));
        }
    }
    if C::RESUMES_WHILE_DRAINING {
        maybe_resume_protocol(this, py)?; // may write more
    }
    if !this.with_write_side(py, |_, side| side.buffer.is_empty()) {
        return Ok(Flushed::Pending);
    }
    remove_writer(this, py)?;
    if !C::RESUMES_WHILE_DRAINING {
        maybe_resume_protocol(this, py)?; // may write more
    }
    Ok(Flushed::Drained)
}

/// `get_write_buffer_size()`.
pub fn buffer_size<C: WriteCore>(this: &C, py: Python<'_>) -> usize {
    this.with_write_side(py, |_, side| side.buffer.len())
}

/// `get_write_buffer_limits()`.
pub fn limits<C: WriteCore>(this: &C, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    this.with_write_side(py, |_, side| side.flow.reported(py))
}

/// `_protocol_paused`.
pub fn protocol_paused<C: WriteCore>(this: &C, py: Python<'_>) -> bool {
    this.with_write_side(py, |_, side| side.flow.paused())
}

/// `set_write_buffer_limits(high, low)`: the stdlib's checks, then pause if now above.
pub fn set_write_buffer_limits<C: WriteCore>(
    this: &C,
    py: Python<'_>,
    high: Option<Bound<'_, PyAny>>,
    low: Option<Bound<'_, PyAny>>,
) -> PyResult<()> {
    let marks = write_buffer_limits(py, high, low)?;
    let replaced = this.with_write_side(py, |_, side| side.flow.set_limits(marks));
    drop(replaced); // after the borrow
    maybe_pause_protocol(this, py)
}

/// `_set_write_buffer_limits`'s defaults and checks, in Python arithmetic on whatever the
/// caller passed (ints of any size, floats, objects with operators), so the same values pass
/// and the same exceptions come out as with the standard library. Called before any borrow
/// of the transport's state: the operators may be Python code that re-enters the transport.
/// The byte counts round fractions down and saturate marks beyond memory, which compares
/// with a buffer size exactly as the marks themselves do.
pub fn write_buffer_limits(
    py: Python<'_>,
    high: Option<Bound<'_, PyAny>>,
    low: Option<Bound<'_, PyAny>>,
) -> PyResult<WaterMarks> {
    let high = high.filter(|h| !h.is_none());
    let low = low.filter(|l| !l.is_none());
    let high = match (high, &low) {
        (Some(h), _) => h,
        (None, None) => DEFAULT_HIGH_WATER.into_pyobject(py)?.into_any(),
        (None, Some(l)) => 4i64.into_pyobject(py)?.mul(l)?,
    };
    let low = match low {
        Some(l) => l,
        None => high.floor_div(4)?,
    };
    if !(high.ge(&low)? && low.ge(0)?) {
        return Err(PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            high.repr()?,
            low.repr()?
        )));
    }
    Ok(WaterMarks {
        high: byte_count(&high)?,
        low: byte_count(&low)?,
        as_set: (low.unbind(), high.unbind()),
    })
}

/// A water mark already known to be >= 0, as a byte count a buffer size is compared with.
fn byte_count(mark: &Bound<'_, PyAny>) -> PyResult<usize> {
    let py = mark.py();
    let whole = if mark.is_instance_of::<PyInt>() {
        mark.clone()
    } else {
        static FLOOR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        match FLOOR.import(py, "math", "floor")?.call1((mark,)) {
            Ok(whole) => whole,
            Err(err) if err.is_instance_of::<PyOverflowError>(py) => return Ok(usize::MAX), // inf
            Err(err) => return Err(err),
        }
    };
    match whole.extract::<usize>() {
        Ok(n) => Ok(n),
        Err(err) if err.is_instance_of::<PyOverflowError>(py) => Ok(usize::MAX),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_high_resumes_at_low_once_each() {
        let mut flow = FlowControl::default();
        assert!(!flow.should_pause(DEFAULT_HIGH_WATER)); // at the mark: not above it
        assert!(flow.should_pause(DEFAULT_HIGH_WATER + 1));
        assert!(!flow.should_pause(10 * DEFAULT_HIGH_WATER)); // already paused
        assert!(flow.paused());
        assert!(!flow.should_resume(DEFAULT_HIGH_WATER / 4 + 1));
        assert!(flow.should_resume(DEFAULT_HIGH_WATER / 4));
        assert!(!flow.should_resume(0)); // already resumed
        assert_eq!(flow.limits(), (DEFAULT_HIGH_WATER / 4, DEFAULT_HIGH_WATER));
    }
}
