//! The per-record half of TLS: the data path of the standard library's `SSLProtocol`, in Rust.
//!
//! `ferroloop._tls.TlsProtocol` is `class TlsProtocol(TlsRecords, asyncio.sslproto.SSLProtocol)`:
//! the standard library keeps the state machine that runs once per connection (handshake,
//! shutdown, timeouts, errors, pausing and resuming the application), and the methods below,
//! which run for every read and every write in the `WRAPPED` state, replace its Python ones
//! with the same behaviour:
//!
//! - `buffer_updated` feeds the received ciphertext to the incoming `MemoryBIO` and decrypts;
//! - `_do_read__copied` decrypts every complete record straight into one `bytes` for a single
//!   `data_received` (the standard library reads one `bytes` per record, then joins them);
//! - `_write_appdata` / `_do_write` encrypt what the application writes, without a trip
//!   through the backlog deque when nothing is queued;
//! - `_process_outgoing` hands the records to the carrier transport; `_control_app_writing`
//!   and `_control_ssl_reading` compare the buffer sizes with the water marks and call the
//!   standard library's method only when a pause or resume is due.
//!
//! The state lives where the standard library keeps it, in the instance's attributes, so its
//! Python methods and these see one connection. Any state other than `WRAPPED` (and the
//! buffered-protocol read) goes to the standard library's own method. When the `SSLObject` is
//! exactly `ssl.SSLObject`, its C object is called directly, skipping the Python wrapper
//! method; a subclass set as `SSLContext.sslobject_class` is written through its own `write`
//! and read by the standard library's own `_do_read__copied`, exactly as asyncio calls it.
//!
//! Loop thread, GIL held. `SSLObject.read`/`write` release the GIL around OpenSSL; nothing
//! here holds Rust state across them.

use pyo3::exceptions::{PyException, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PySlice, PyString, PyTuple};

/// Largest TLS record payload: plaintext that may already sit, half-received, inside OpenSSL
/// in addition to what the incoming BIO still holds.
const MAX_RECORD_PLAINTEXT: isize = 16 * 1024;

/// What the data path needs from `asyncio.sslproto` and `ssl`, looked up once.
struct Stdlib {
    wrapped: Py<PyAny>,
    flushing: Py<PyAny>,
    again_errors: Py<PyAny>,
    ssl_object_type: Py<PyAny>,
    buffer_updated: Py<PyAny>,
    write_appdata: Py<PyAny>,
    control_app_writing: Py<PyAny>,
    control_ssl_reading: Py<PyAny>,
    read_copied: Py<PyAny>,
}

fn stdlib(py: Python<'_>) -> PyResult<&Stdlib> {
    static STDLIB: PyOnceLock<Stdlib> = PyOnceLock::new();
    STDLIB.get_or_try_init(py, || {
        let sslproto = py.import("asyncio.sslproto")?;
        let states = sslproto.getattr("SSLProtocolState")?;
        let protocol = sslproto.getattr("SSLProtocol")?;
        let method = |name: &str| protocol.getattr(name).map(Bound::unbind);
        Ok(Stdlib {
            wrapped: states.getattr("WRAPPED")?.unbind(),
            flushing: states.getattr("FLUSHING")?.unbind(),
            again_errors: sslproto.getattr("SSLAgainErrors")?.unbind(),
            ssl_object_type: py.import("ssl")?.getattr("SSLObject")?.unbind(),
            buffer_updated: method("buffer_updated")?,
            write_appdata: method("_write_appdata")?,
            control_app_writing: method("_control_app_writing")?,
            control_ssl_reading: method("_control_ssl_reading")?,
            read_copied: method("_do_read__copied")?,
        })
    })
}

/// The object to call `write` on: the `_ssl` C object behind a plain `ssl.SSLObject`, or the
/// caller's custom `sslobject_class` instance.
fn ssl_engine<'py>(protocol: &Bound<'py, PyAny>, lib: &Stdlib) -> PyResult<Bound<'py, PyAny>> {
    let py = protocol.py();
    let sslobj = protocol.getattr(intern!(py, "_sslobj"))?;
    if sslobj.get_type().is(lib.ssl_object_type.bind(py)) {
        sslobj.getattr(intern!(py, "_sslobj"))
    } else {
        Ok(sslobj)
    }
}

/// Whether the connection is in `SSLProtocolState.WRAPPED`, the state this data path serves.
fn is_wrapped(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<bool> {
    let py = protocol.py();
    Ok(protocol
        .getattr(intern!(py, "_state"))?
        .is(lib.wrapped.bind(py)))
}

fn attr_usize(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> PyResult<usize> {
    obj.getattr(name)?.extract()
}

/// `except Exception as ex: self._fatal_error(ex, message)`, as the standard library wraps
/// its read and write paths; BaseExceptions such as KeyboardInterrupt propagate.
fn fatal_on_exception(
    protocol: &Bound<'_, PyAny>,
    result: PyResult<()>,
    message: &str,
) -> PyResult<()> {
    match result {
        Err(err) if err.is_instance_of::<PyException>(protocol.py()) => {
            let py = protocol.py();
            protocol.call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))?;
            Ok(())
        }
        other => other,
    }
}

/// Decrypt every complete record the incoming BIO holds into one `bytes`. Returns the
/// plaintext (None if there was none) and whether the peer's close_notify arrived.
fn decrypt_available<'py>(
    engine: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    lib: &Stdlib,
) -> PyResult<(Option<Bound<'py, PyAny>>, bool)> {
    let py = engine.py();
    let pending = attr_usize(incoming, intern!(py, "pending"))? as isize;
    let mut capacity = pending + MAX_RECORD_PLAINTEXT;
    // SAFETY: PyBytesWriter_Create returns a writer owning `capacity` bytes, or NULL with an
    // exception set. Every path below hands it back exactly once, to Discard or FinishWithSize.
    let writer = unsafe { ffi::compat::PyBytesWriter_Create(capacity) };
    if writer.is_null() {
        return Err(PyErr::fetch(py));
    }
    let discard = |err: PyErr| {
        // SAFETY: the writer is discarded once, on an error path that returns right after.
        unsafe { ffi::compat::PyBytesWriter_Discard(writer) };
        Err(err)
    };
    let mut filled: isize = 0;
    let mut closed = false;
    loop {
        if filled == capacity {
            capacity *= 2;
            // SAFETY: `writer` is live; on failure it is still live and is discarded.
            if unsafe { ffi::compat::PyBytesWriter_Resize(writer, capacity) } < 0 {
                return discard(PyErr::fetch(py));
            }
        }
        let room = capacity - filled;
        // SAFETY: the writer's buffer holds `capacity` bytes, so `filled..capacity` is in
        // bounds. The memoryview lends that range to `read`, which releases its buffer before
        // returning; the view is dropped before the writer is resized, finished or discarded.
        let window = unsafe {
            let data = ffi::compat::PyBytesWriter_GetData(writer).cast::<std::ffi::c_char>();
            Bound::from_owned_ptr_or_err(
                py,
                ffi::PyMemoryView_FromMemory(data.offset(filled), room, ffi::PyBUF_WRITE),
            )
        };
        let window = match window {
            Ok(window) => window,
            Err(err) => return discard(err),
        };
        let outcome = engine.call_method1(intern!(py, "read"), (room, &window));
        drop(window);
        match outcome.and_then(|count| count.extract::<isize>()) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(count) if !(0..=room).contains(&count) => {
                // The C object never says this; still, never let a count steer the writer.
                return discard(PyValueError::new_err(format!(
                    "SSLObject.read() returned {count} for a {room}-byte buffer"
                )));
            }
            Ok(count) => {
                filled += count;
                // A short read ended a record. OpenSSL reads the BIO one record at a time (no
                // read-ahead: Python's ssl never turns it on), so with the BIO empty the next
                // read could only raise SSLWantReadError; skip that exception.
                if count < room {
                    match attr_usize(incoming, intern!(py, "pending")) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(err) => return discard(err),
                    }
                }
            }
            Err(err) if err.matches(py, lib.again_errors.bind(py))? => break,
            Err(err) => return discard(err),
        }
    }
    if filled == 0 {
        // SAFETY: the writer is discarded once and not used afterwards.
        unsafe { ffi::compat::PyBytesWriter_Discard(writer) };
        return Ok((None, closed));
    }
    // SAFETY: `filled` bytes were written by `read`; finishing consumes the writer and returns
    // a new reference or NULL with an exception set.
    let plaintext = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::compat::PyBytesWriter_FinishWithSize(writer, filled),
        )?
    };
    Ok((Some(plaintext), closed))
}

/// Base class of `ferroloop._tls.TlsProtocol`; holds no state of its own.
#[pyclass(subclass, frozen, module = "ferroloop._core")]
pub struct TlsRecords;

#[pymethods]
impl TlsRecords {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) -> Self {
        TlsRecords
    }

    /// The receive buffer: the standard library sizes it to `max_size` once, which is never
    /// less than what it would hand out for any `n`.
    fn get_buffer<'py>(slf: &Bound<'py, Self>, _n: isize) -> PyResult<Bound<'py, PyAny>> {
        slf.getattr(intern!(slf.py(), "_ssl_buffer_view"))
    }

    fn buffer_updated(slf: &Bound<'_, Self>, nbytes: isize) -> PyResult<()> {
        let py = slf.py();
        let lib = stdlib(py)?;
        let protocol = slf.as_any();
        if !is_wrapped(protocol, lib)? {
            lib.buffer_updated.bind(py).call1((protocol, nbytes))?;
            return Ok(());
        }
        let received = protocol
            .getattr(intern!(py, "_ssl_buffer_view"))?
            .get_item(PySlice::new(py, 0, nbytes, 1))?;
        protocol
            .getattr(intern!(py, "_incoming"))?
            .call_method1(intern!(py, "write"), (received,))?;
        read_wrapped(protocol, lib)
    }

    fn _do_read(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let lib = stdlib(py)?;
        let state = slf.getattr(intern!(py, "_state"))?;
        if !(state.is(lib.wrapped.bind(py)) || state.is(lib.flushing.bind(py))) {
            return Ok(());
        }
        read_wrapped(slf.as_any(), lib)
    }

    #[pyo3(name = "_do_read__copied")]
    fn do_read_copied(slf: &Bound<'_, Self>) -> PyResult<()> {
        read_copied(slf.as_any(), stdlib(slf.py())?)
    }

    fn _write_appdata(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let lib = stdlib(py)?;
        let protocol = slf.as_any();
        if !is_wrapped(protocol, lib)? {
            // Closed or closing (a warning past a threshold), or handshaking (queue only).
            lib.write_appdata.bind(py).call1((protocol, list_of_data))?;
            return Ok(());
        }
        let result = encrypt_all(protocol, list_of_data, lib);
        fatal_on_exception(protocol, result, "Fatal error on SSL protocol")
    }

    fn _do_write(slf: &Bound<'_, Self>) -> PyResult<()> {
        let lib = stdlib(slf.py())?;
        encrypt_backlog(slf.as_any(), lib)?;
        process_outgoing(slf.as_any(), lib)
    }

    fn _process_outgoing(slf: &Bound<'_, Self>) -> PyResult<()> {
        process_outgoing(slf.as_any(), stdlib(slf.py())?)
    }

    fn _control_app_writing(slf: &Bound<'_, Self>) -> PyResult<()> {
        control_app_writing(slf.as_any(), stdlib(slf.py())?)
    }

    fn _control_ssl_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        control_ssl_reading(slf.as_any(), stdlib(slf.py())?)
    }
}

/// The body of `SSLProtocol._do_read` once the state is WRAPPED or FLUSHING.
fn read_wrapped(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    let result = (|| {
        if !protocol
            .getattr(intern!(py, "_app_reading_paused"))?
            .is_truthy()?
        {
            if protocol
                .getattr(intern!(py, "_app_protocol_is_buffer"))?
                .is_truthy()?
            {
                protocol.call_method0(intern!(py, "_do_read__buffered"))?;
            } else {
                read_copied(protocol, lib)?;
            }
            if protocol
                .getattr(intern!(py, "_write_backlog"))?
                .is_truthy()?
            {
                encrypt_backlog(protocol, lib)?;
            }
            process_outgoing(protocol, lib)?;
        }
        control_ssl_reading(protocol, lib)
    })();
    fatal_on_exception(protocol, result, "Fatal error on SSL protocol")
}

/// `SSLProtocol._do_read__copied`: one `data_received` with everything decrypted, then the
/// peer's close_notify if it came.
fn read_copied(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    let sslobj = protocol.getattr(intern!(py, "_sslobj"))?;
    if !sslobj.get_type().is(lib.ssl_object_type.bind(py)) {
        // A custom sslobject_class is read exactly as the standard library reads it.
        lib.read_copied.bind(py).call1((protocol,))?;
        return Ok(());
    }
    let engine = sslobj.getattr(intern!(py, "_sslobj"))?;
    let incoming = protocol.getattr(intern!(py, "_incoming"))?;
    let (plaintext, closed) = decrypt_available(&engine, &incoming, lib)?;
    if let Some(plaintext) = plaintext {
        protocol
            .getattr(intern!(py, "_app_protocol"))?
            .call_method1(intern!(py, "data_received"), (plaintext,))?;
    }
    if closed {
        protocol.call_method0(intern!(py, "_call_eof_received"))?;
        protocol.call_method0(intern!(py, "_start_shutdown"))?;
    }
    Ok(())
}

/// What one `SSLObject.write(data)` did with its chunk.
enum Written {
    All,
    /// OpenSSL took only this many bytes.
    Part(usize),
    /// OpenSSL asked to be called again (`SSLAgainErrors`); it took nothing.
    Again,
}

fn encrypt_chunk(
    engine: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
    lib: &Stdlib,
) -> PyResult<Written> {
    let py = engine.py();
    match engine.call_method1(intern!(py, "write"), (data,)) {
        Ok(count) => {
            let count: usize = count.extract()?;
            Ok(if count < data.len()? {
                Written::Part(count)
            } else {
                Written::All
            })
        }
        Err(err) if err.matches(py, lib.again_errors.bind(py))? => Ok(Written::Again),
        Err(err) => Err(err),
    }
}

/// `data[taken:]`.
fn unwritten<'py>(data: &Bound<'py, PyAny>, taken: usize) -> PyResult<Bound<'py, PyAny>> {
    let py = data.py();
    data.get_item(PySlice::new(py, taken as isize, data.len()? as isize, 1))
}

/// `_write_appdata` in the WRAPPED state: encrypt each chunk at once while nothing is queued
/// before it, queue the rest (counted in `_write_buffer_size`), then hand the records over.
fn encrypt_all(
    protocol: &Bound<'_, PyAny>,
    list_of_data: &Bound<'_, PyAny>,
    lib: &Stdlib,
) -> PyResult<()> {
    let py = protocol.py();
    let backlog = protocol.getattr(intern!(py, "_write_backlog"))?;
    let engine = ssl_engine(protocol, lib)?;
    let mut queued_bytes = 0usize;
    let mut retry_backlog = false;
    let mut outcome = Ok(());
    for data in list_of_data.try_iter()? {
        let data = data?;
        let rest = if backlog.is_truthy()? {
            data
        } else {
            match encrypt_chunk(&engine, &data, lib) {
                Ok(Written::All) => continue,
                Ok(Written::Part(taken)) => {
                    // The standard library's write loop goes on with the rest at once.
                    retry_backlog = true;
                    unwritten(&data, taken)?
                }
                Ok(Written::Again) => data,
                Err(err) => {
                    outcome = Err(err);
                    break;
                }
            }
        };
        queued_bytes += rest.len()?;
        backlog.call_method1(intern!(py, "append"), (rest,))?;
    }
    if queued_bytes > 0 {
        let size = attr_usize(protocol, intern!(py, "_write_buffer_size"))?;
        protocol.setattr(intern!(py, "_write_buffer_size"), size + queued_bytes)?;
    }
    outcome?;
    if retry_backlog {
        encrypt_backlog(protocol, lib)?;
    }
    process_outgoing(protocol, lib)
}

/// The loop of `SSLProtocol._do_write`: encrypt queued chunks until the queue is empty or
/// OpenSSL asks to be called again, keeping `_write_buffer_size` in step.
fn encrypt_backlog(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    let backlog = protocol.getattr(intern!(py, "_write_backlog"))?;
    if !backlog.is_truthy()? {
        return Ok(());
    }
    let engine = ssl_engine(protocol, lib)?;
    let mut size = attr_usize(protocol, intern!(py, "_write_buffer_size"))?;
    let mut outcome = Ok(());
    while backlog.is_truthy()? {
        let data = backlog.get_item(0)?;
        match encrypt_chunk(&engine, &data, lib) {
            Ok(Written::All) => {
                size = size.saturating_sub(data.len()?);
                backlog.call_method0(intern!(py, "popleft"))?;
            }
            Ok(Written::Part(taken)) => {
                size = size.saturating_sub(taken);
                backlog.set_item(0, unwritten(&data, taken)?)?;
            }
            Ok(Written::Again) => break,
            Err(err) => {
                outcome = Err(err);
                break;
            }
        }
    }
    protocol.setattr(intern!(py, "_write_buffer_size"), size)?;
    outcome
}

/// `SSLProtocol._process_outgoing`: the records OpenSSL produced go to the carrier transport
/// unless it asked us to pause, then the application's write flow control.
fn process_outgoing(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    if !protocol
        .getattr(intern!(py, "_ssl_writing_paused"))?
        .is_truthy()?
    {
        let records = protocol
            .getattr(intern!(py, "_outgoing"))?
            .call_method0(intern!(py, "read"))?;
        if records.len()? > 0 {
            protocol
                .getattr(intern!(py, "_transport"))?
                .call_method1(intern!(py, "write"), (records,))?;
        }
    }
    control_app_writing(protocol, lib)
}

/// The attribute names `SSLProtocol` gives one direction's pause flag and water marks.
struct FlowMarks<'py> {
    paused: &'py Bound<'py, PyString>,
    low: &'py Bound<'py, PyString>,
    high: &'py Bound<'py, PyString>,
}

/// Calls the standard library's flow-control `method` (which pauses or resumes, reporting
/// errors its way) only when `size` crosses a water mark in the direction it would act on.
fn control_flow(
    protocol: &Bound<'_, PyAny>,
    size: usize,
    marks: FlowMarks<'_>,
    method: &Py<PyAny>,
) -> PyResult<()> {
    let due = if protocol.getattr(marks.paused)?.is_truthy()? {
        size <= attr_usize(protocol, marks.low)?
    } else {
        size >= attr_usize(protocol, marks.high)?
    };
    if due {
        method.bind(protocol.py()).call1((protocol,))?;
    }
    Ok(())
}

fn control_app_writing(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    let outgoing = protocol.getattr(intern!(py, "_outgoing"))?;
    let size = attr_usize(&outgoing, intern!(py, "pending"))?
        + attr_usize(protocol, intern!(py, "_write_buffer_size"))?;
    let marks = FlowMarks {
        paused: intern!(py, "_app_writing_paused"),
        low: intern!(py, "_outgoing_low_water"),
        high: intern!(py, "_outgoing_high_water"),
    };
    control_flow(protocol, size, marks, &lib.control_app_writing)
}

fn control_ssl_reading(protocol: &Bound<'_, PyAny>, lib: &Stdlib) -> PyResult<()> {
    let py = protocol.py();
    let incoming = protocol.getattr(intern!(py, "_incoming"))?;
    let size = attr_usize(&incoming, intern!(py, "pending"))?;
    let marks = FlowMarks {
        paused: intern!(py, "_ssl_reading_paused"),
        low: intern!(py, "_incoming_low_water"),
        high: intern!(py, "_incoming_high_water"),
    };
    control_flow(protocol, size, marks, &lib.control_ssl_reading)
}
