//! `DatagramCore`: the Rust half of the datagram transport that `create_datagram_endpoint`
//! makes (UDP over IPv4/IPv6, Unix datagram sockets), with the standard library's
//! `_SelectorDatagramTransport` semantics: one datagram per readable event, to
//! `datagram_received(data, addr)`; `sendto` tries the socket first and buffers
//! `(bytes(data), addr)` only when it would block; OS errors of either direction go to
//! `error_received` and leave the endpoint open; anything else is fatal; flow control counts
//! each buffered datagram's size plus the release's `_header_size`.
//!
//! Loop thread, GIL held. Datagrams are received into the loop's scratch buffer and copied
//! into a `bytes` of their size; the address objects of recent senders are reused, and
//! sending to one of them converts it once (`datagram_addresses.rs`: the echo pattern
//! `sendto(data, addr)`, also with several peers taking turns). Addresses the socket
//! module must convert itself (host names, Unix paths) and sockets of other families go
//! through the socket object's own `sendto`/`recvfrom`. The Python wrapper is
//! `python/ferroloop/_datagram.py`.

use std::collections::VecDeque;

use pyo3::exceptions::{
    PyAttributeError, PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError,
};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::buffers::ByteView;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::fd_watchers::Direction;
use crate::gil_cell::GilCell;
use crate::socket_owner::SocketOwner;
use crate::support;
use crate::sys::datagram::{self as datagram_io, SockAddr};
use crate::trace::IoKind;

use super::common::{self, Connection, TransportCore};
use super::datagram_addresses::{AddressBook, Destination};
use super::write_side::{self, FlowControl, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

/// `_SelectorTransport.max_size`: the most one read takes (the loop's scratch buffer).
const MAX_SIZE: usize = crate::event_loop::MAX_READ;

/// Where a datagram goes.
enum Dest {
    /// The connected peer: `send`.
    Peer,
    /// An address converted here: `sendto`.
    Raw(SockAddr),
    /// An address only the socket module converts: `sock.sendto(data, addr)`.
    Python(Py<PyAny>),
}

struct Outgoing {
    data: Box<[u8]>,
    dest: Dest,
}

struct DatagramState {
    conn: Connection,
    /// `_call_connection_lost` ran: the socket is closed, the transport spent.
    released: bool,
    buffer: VecDeque<Outgoing>,
    buffer_size: usize,
    writer_installed: bool,
    flow: FlowControl,
    /// Recent senders and the address objects made for them.
    addresses: AddressBook,
    /// The last address object sent to that is not the book's, and what it converted to.
    last_to: Option<(Py<PyAny>, SockAddr)>,
}

/// How a send ended, in the terms of the stdlib's `try`/`except` around `sock.sendto`.
enum Sent {
    Done,
    WouldBlock,
    Failed(PyErr),
}

#[pyclass(module = "ferroloop._core", frozen)]
pub struct DatagramCore {
    event_loop: Py<LoopCore>,
    sock: SocketOwner,
    /// AF_INET, AF_INET6 or AF_UNIX: received addresses are converted here.
    native_family: Option<i32>,
    family: i32,
    /// `self._extra['peername']` was truthy: every send is `send(data)`.
    connected: bool,
    /// `self._address`, when truthy: the only address `sendto` accepts.
    address: Option<Py<PyAny>>,
    /// `_header_size` (3.12+: 8), counted per buffered datagram.
    header_size: usize,
    /// 3.12+ sends an empty datagram; 3.11 drops `sendto(b'')`.
    sends_empty: bool,
    state: GilCell<DatagramState>,
}

const WRITE_ERROR: &str = "Fatal write error on datagram transport";

impl TransportCore for DatagramCore {
    fn is_quiet_error(exc: &Bound<'_, PyAny>) -> bool {
        exc.is_instance_of::<PyOSError>()
    }

    fn event_loop<'py>(&self, py: Python<'py>) -> &Bound<'py, LoopCore> {
        self.event_loop.bind(py)
    }

    fn fd(&self) -> std::os::fd::RawFd {
        self.sock.raw_fd()
    }

    fn with_connection<R>(&self, py: Python<'_>, f: impl FnOnce(&mut Connection) -> R) -> R {
        self.state.with_borrow_mut(py, |st| f(&mut st.conn))
    }

    fn close_after_error(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.force_close(py, exc)
    }

    fn record_flow(&self, py: Python<'_>, kind: IoKind) {
        self.io_event(py, kind, 0);
    }
}

impl DatagramCore {
    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.peers(py).1
    }

    fn io_event(&self, py: Python<'_>, kind: IoKind, bytes: usize) {
        self.event_loop(py)
            .get()
            .instruments()
            .on_io(py, kind, self.sock.raw_fd(), bytes);
    }

    fn add_writer(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        common::watch(
            slf.as_any(),
            this,
            Direction::Write,
            intern!(py, "_sendto_ready"),
        )?;
        this.state
            .with_borrow_mut(py, |st| st.writer_installed = true);
        Ok(())
    }

    fn remove_writer(&self, py: Python<'_>) -> PyResult<()> {
        self.state
            .with_borrow_mut(py, |st| st.writer_installed = false);
        common::unwatch(self, py, Direction::Write)
    }

    /// Mirrors `_SelectorTransport._force_close`: drop what is buffered, stop watching,
    /// schedule `connection_lost`.
    fn force_close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        let closed = self.state.with_borrow_mut(py, |st| {
            if st.conn.conn_lost.is_lost() {
                return None;
            }
            let dropped = std::mem::take(&mut st.buffer);
            st.buffer_size = 0;
            let was_closing = st.conn.closing;
            st.conn.closing = true;
            st.conn.conn_lost.record();
            Some((dropped, was_closing))
        });
        let Some((dropped, was_closing)) = closed else {
            return Ok(());
        };
        // Dropped outside the borrow: an address object's finalizer may call the transport.
        let had_buffer = !dropped.is_empty();
        drop(dropped);
        if had_buffer {
            self.remove_writer(py)?;
        }
        if !was_closing {
            common::remove_reader(self, py)?;
        }
        common::schedule_connection_lost(self, py, exc)
    }

    /// `self._protocol.error_received(exc)`: its exceptions are the caller's.
    fn error_received(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        let protocol = self.protocol(py);
        let Some(protocol) = protocol else {
            return Ok(());
        };
        protocol
            .bind(py)
            .call_method1(intern!(py, "error_received"), (err.into_value(py),))?;
        Ok(())
    }

    /// The outcome of a send, as the stdlib's handlers take it: would-block is buffered, an
    /// `OSError` goes to `error_received`, anything else is fatal.
    fn after_failed_send(&self, py: Python<'_>, err: PyErr) -> PyResult<()> {
        if err.is_instance_of::<PyOSError>(py) {
            self.error_received(py, err)
        } else {
            common::fatal_error(self, py, err, WRITE_ERROR)
        }
    }

    /// Where `addr` is, for this socket (the caller checked it against `_address`).
    fn dest_for(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> Dest {
        if self.connected {
            return Dest::Peer;
        }
        let known = self.state.with_borrow(py, |st| {
            st.addresses.destination_of(addr).or(match &st.last_to {
                Some((last, raw)) if last.is(addr) => Some(Destination::Native(*raw)),
                _ => None,
            })
        });
        let destination = known.unwrap_or_else(|| {
            let destination = Destination::of(addr, self.family);
            let old = self.state.with_borrow_mut(py, |st| match destination {
                _ if st.addresses.set_destination(addr, destination) => None,
                Destination::Native(raw) => st.last_to.replace((addr.clone().unbind(), raw)),
                Destination::SocketModule => None,
            });
            drop(old);
            destination
        });
        match destination {
            Destination::Native(raw) => Dest::Raw(raw),
            Destination::SocketModule => Dest::Python(addr.clone().unbind()),
        }
    }

    /// One send of `data` (`original`: the caller's object, when there is one) to `dest`.
    fn send(
        &self,
        py: Python<'_>,
        data: &[u8],
        original: Option<&Bound<'_, PyAny>>,
        dest: &Dest,
    ) -> Sent {
        let raw = match dest {
            Dest::Peer => None,
            Dest::Raw(raw) => Some(raw),
            Dest::Python(addr) => return self.send_through_socket(py, data, original, addr),
        };
        let fd = match self.sock.fd(py) {
            Ok(fd) => fd,
            Err(err) => return Sent::Failed(err),
        };
        match datagram_io::send_to(fd, data, raw) {
            Ok(Some(n)) => {
                self.io_event(py, IoKind::Write, n);
                Sent::Done
            }
            Ok(None) => Sent::WouldBlock,
            Err(err) => Sent::Failed(os_error(err)),
        }
    }

    /// `self._sock.sendto(data, addr)`, for addresses only the socket module converts.
    fn send_through_socket(
        &self,
        py: Python<'_>,
        data: &[u8],
        original: Option<&Bound<'_, PyAny>>,
        addr: &Py<PyAny>,
    ) -> Sent {
        let sock = self.sock.object(py);
        let result = match original {
            Some(obj) => sock.call_method1(intern!(py, "sendto"), (obj, addr)),
            None => sock.call_method1(intern!(py, "sendto"), (PyBytes::new(py, data), addr)),
        };
        match result {
            Ok(_) => {
                self.io_event(py, IoKind::Write, data.len());
                Sent::Done
            }
            Err(err)
                if err.is_instance_of::<PyBlockingIOError>(py)
                    || err.is_instance_of::<PyInterruptedError>(py) =>
            {
                Sent::WouldBlock
            }
            Err(err) => Sent::Failed(err),
        }
    }

    /// `self._sock.recvfrom(self.max_size)`, through the socket object (other families).
    fn receive_through_socket<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        match self
            .sock
            .object(py)
            .call_method1(intern!(py, "recvfrom"), (MAX_SIZE,))
        {
            Ok(pair) => {
                let (data, addr): (Bound<'py, PyAny>, Bound<'py, PyAny>) = pair.extract()?;
                Ok(Some((data, addr)))
            }
            Err(err)
                if err.is_instance_of::<PyBlockingIOError>(py)
                    || err.is_instance_of::<PyInterruptedError>(py) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// One datagram from the socket: (data, sender) or None if there was none; errors are
    /// those `sock.recvfrom` would raise.
    fn receive<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Option<(Bound<'py, PyAny>, Bound<'py, PyAny>)>> {
        if self.native_family.is_none() {
            return self.receive_through_socket(py);
        }
        let fd = self.sock.fd(py)?;
        let received = self.event_loop(py).get().with_read_buffer(py, |buf| {
            datagram_io::recv_from(fd, &mut buf[..MAX_SIZE])
                .map(|r| r.map(|(n, from)| (PyBytes::new(py, &buf[..n]), from)))
        });
        let (data, from) = match received {
            Ok(None) => return Ok(None),
            Err(err) => return Err(os_error(err)),
            Ok(Some(received)) => received,
        };
        self.io_event(py, IoKind::Read, data.as_bytes().len());
        Ok(Some((data.into_any(), self.sender_object(py, from)?)))
    }

    /// The address object `datagram_received` gets for a datagram from `from`.
    fn sender_object<'py>(&self, py: Python<'py>, from: SockAddr) -> PyResult<Bound<'py, PyAny>> {
        let known = self
            .state
            .with_borrow(py, |st| st.addresses.object_for(py, &from));
        if let Some(addr) = known {
            return Ok(addr);
        }
        // Not under a borrow: allocating the address may run the GC, and finalizers with it.
        let addr = from.to_python(py)?;
        let evicted = self
            .state
            .with_borrow_mut(py, |st| st.addresses.remember(from, addr.clone().unbind()));
        drop(evicted);
        Ok(addr)
    }

    fn maybe_pause_protocol(&self, py: Python<'_>) -> PyResult<()> {
        if self
            .state
            .with_borrow_mut(py, |st| st.flow.should_pause(st.buffer_size))
        {
            self.record_flow(py, IoKind::PauseWriting);
            write_side::notify_flow(self, py, true)?;
        }
        Ok(())
    }

    fn maybe_resume_protocol(&self, py: Python<'_>) -> PyResult<()> {
        if self
            .state
            .with_borrow_mut(py, |st| st.flow.should_resume(st.buffer_size))
        {
            self.record_flow(py, IoKind::ResumeWriting);
            write_side::notify_flow(self, py, false)?;
        }
        Ok(())
    }

    /// The address `sendto(data, addr)` sends to: `addr`, or `_address` for an endpoint made
    /// with `remote_addr` (ValueError for any other).
    fn checked_address<'py>(
        &self,
        py: Python<'py>,
        addr: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let Some(address) = &self.address else {
            return Ok(addr);
        };
        let address = address.bind(py);
        // `addr not in (None, self._address)`
        if !(addr.is_none() || addr.is(address) || addr.eq(address)?) {
            return Err(PyValueError::new_err(format!(
                "Invalid address: must be None or {}",
                address.str()?
            )));
        }
        Ok(address.clone())
    }
}

#[pymethods]
impl DatagramCore {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (event_loop, sock, transport, protocol, family, connected, address, header_size, sends_empty))]
    fn new(
        event_loop: Bound<'_, LoopCore>,
        sock: Bound<'_, PyAny>,
        transport: Bound<'_, PyAny>,
        protocol: Bound<'_, PyAny>,
        family: i32,
        connected: bool,
        address: Option<Bound<'_, PyAny>>,
        header_size: usize,
        sends_empty: bool,
    ) -> PyResult<Self> {
        let fd: i32 = sock.call_method0(intern!(sock.py(), "fileno"))?.extract()?;
        let native_family = [libc::AF_INET, libc::AF_INET6, libc::AF_UNIX]
            .contains(&family)
            .then_some(family);
        Ok(DatagramCore {
            event_loop: event_loop.unbind(),
            sock: SocketOwner::new(sock, fd)?,
            native_family,
            family,
            connected,
            address: address.map(Bound::unbind),
            header_size,
            sends_empty,
            state: GilCell::new(DatagramState {
                conn: Connection::new(transport, protocol),
                released: false,
                buffer: VecDeque::new(),
                buffer_size: 0,
                writer_installed: false,
                flow: FlowControl::default(),
                addresses: AddressBook::default(),
                last_to: None,
            }),
        })
    }

    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::start_reading(slf)
    }

    /// Mirrors `_SelectorDatagramTransport._read_ready`.
    fn _read_ready(&self, py: Python<'_>) -> PyResult<()> {
        if self.state.with_borrow(py, |st| st.conn.conn_lost.is_lost()) {
            return Ok(());
        }
        match self.receive(py) {
            Ok(None) => Ok(()),
            Ok(Some((data, addr))) => {
                let protocol = self.protocol(py);
                if let Some(protocol) = protocol {
                    protocol
                        .bind(py)
                        .call_method1(intern!(py, "datagram_received"), (data, addr))?;
                }
                Ok(())
            }
            Err(err) if err.is_instance_of::<PyOSError>(py) => self.error_received(py, err),
            Err(err) => {
                common::fatal_error(self, py, err, "Fatal read error on datagram transport")
            }
        }
    }

    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !write_side::is_bytes_like(data) {
            let name = data.get_type().name()?;
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                name.repr()?
            )));
        }
        if !this.sends_empty && !data.is_truthy()? {
            return Ok(());
        }
        let addr = this.checked_address(py, addr.unwrap_or_else(|| py.None().into_bound(py)))?;
        let state = this.state.with_borrow_mut(py, |st| {
            if st.conn.conn_lost.is_lost() && this.address.is_some() {
                let warn = st.conn.conn_lost.count() >= LOG_THRESHOLD_FOR_CONNLOST_WRITES;
                st.conn.conn_lost.record();
                return Err(warn);
            }
            Ok((st.released, st.buffer.is_empty()))
        });
        let buffer_empty = match state {
            Err(warn) => {
                if warn {
                    support::log_warning(py, "socket.send() raised exception.")?;
                }
                return Ok(());
            }
            // The stdlib's transport has dropped its socket by now and fails the same way.
            Ok((true, _)) => {
                return Err(PyAttributeError::new_err(
                    "'NoneType' object has no attribute 'sendto'",
                ));
            }
            Ok((false, empty)) => empty,
        };
        // A memoryview that is not C-contiguous: the socket's BufferError, fatal as there.
        let view = match ByteView::new(data) {
            Ok(view) => view,
            Err(err) => return common::fatal_error(this, py, err, WRITE_ERROR),
        };
        let dest = this.dest_for(py, &addr);
        if buffer_empty {
            match this.send(py, view.as_slice(), Some(data), &dest) {
                Sent::Done => return Ok(()),
                Sent::Failed(err) => return this.after_failed_send(py, err),
                Sent::WouldBlock => Self::add_writer(slf)?,
            }
        }
        this.state.with_borrow_mut(py, |st| {
            st.buffer.push_back(Outgoing {
                data: view.as_slice().into(),
                dest,
            });
            st.buffer_size += view.len() + this.header_size;
        });
        this.maybe_pause_protocol(py)
    }

    fn _sendto_ready(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            let Some(item) = self.state.with_borrow_mut(py, |st| st.buffer.pop_front()) else {
                break;
            };
            match self.send(py, &item.data, None, &item.dest) {
                Sent::Done => {
                    let size = item.data.len() + self.header_size;
                    self.state.with_borrow_mut(py, |st| st.buffer_size -= size);
                }
                Sent::WouldBlock => {
                    self.state
                        .with_borrow_mut(py, |st| st.buffer.push_front(item));
                    break;
                }
                Sent::Failed(err) => {
                    let size = item.data.len() + self.header_size;
                    self.state.with_borrow_mut(py, |st| st.buffer_size -= size);
                    return self.after_failed_send(py, err);
                }
            }
        }
        self.maybe_resume_protocol(py)?; // may append to the buffer
        let (drained, closing) = self
            .state
            .with_borrow(py, |st| (st.buffer.is_empty(), st.conn.closing));
        if drained {
            self.remove_writer(py)?;
            if closing {
                common::call_connection_lost(self, py)?;
            }
        }
        Ok(())
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        common::is_reading(self, py)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        common::pause_reading(self, py)
    }

    fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        common::resume_reading(slf)
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let drained = self.state.with_borrow_mut(py, |st| {
            if st.conn.closing {
                return None;
            }
            st.conn.closing = true;
            let drained = st.buffer.is_empty();
            if drained {
                st.conn.conn_lost.record();
            }
            Some(drained)
        });
        let Some(drained) = drained else {
            return Ok(());
        };
        common::remove_reader(self, py)?;
        if drained {
            self.remove_writer(py)?;
            common::schedule_connection_lost(self, py, py.None())?;
        }
        Ok(())
    }

    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.force_close(py, py.None())
    }

    fn _force_close(&self, py: Python<'_>, exc: Py<PyAny>) -> PyResult<()> {
        self.force_close(py, exc)
    }

    #[pyo3(signature = (exc, message="Fatal error on transport"))]
    fn _fatal_error(&self, py: Python<'_>, exc: Bound<'_, PyAny>, message: &str) -> PyResult<()> {
        common::fatal_error(self, py, PyErr::from_value(exc), message)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |v| v.conn.closing)
    }

    fn set_protocol(&self, py: Python<'_>, protocol: Bound<'_, PyAny>) {
        let old = self
            .state
            .with_borrow_mut(py, |st| st.conn.replace_protocol(protocol));
        drop(old);
    }

    fn get_protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.with_borrow(py, |v| v.buffer_size)
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        self.state.with_borrow(py, |st| st.flow.reported(py))
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<Bound<'_, PyAny>>,
        low: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let marks = write_side::write_buffer_limits(py, high, low)?;
        let replaced = self
            .state
            .with_borrow_mut(py, |st| st.flow.set_limits(marks));
        drop(replaced); // after the borrow
        self.maybe_pause_protocol(py)
    }

    /// Deliver `connection_lost(exc)` and let go of the protocol and the transport; the
    /// Python side closes the socket.
    fn _connection_lost(&self, py: Python<'_>, exc: Bound<'_, PyAny>) -> PyResult<()> {
        let result = common::connection_lost(self, py, &exc);
        let released = self.state.with_borrow_mut(py, |st| {
            st.released = true;
            (st.addresses.take(), st.last_to.take())
        });
        drop(released);
        result
    }

    #[getter]
    fn _closing(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |v| v.conn.closing)
    }

    #[getter]
    fn _paused(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |st| st.conn.paused)
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.with_borrow(py, |v| v.conn.conn_lost.count())
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.with_borrow(py, |v| v.flow.paused())
    }

    fn __traverse__(&self, visit: pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.event_loop)?;
        self.sock.traverse(&visit)?;
        visit.call(&self.address)?;
        self.state.traverse(&visit, |st, visit| {
            st.conn.visit(visit)?;
            st.addresses.traverse(visit)?;
            if let Some((addr, _)) = &st.last_to {
                visit.call(addr)?;
            }
            for item in &st.buffer {
                if let Dest::Python(addr) = &item.dest {
                    visit.call(addr)?;
                }
            }
            Ok(())
        })
    }

    fn __clear__(&self, py: Python<'_>) {
        let released = self.state.with_borrow_mut(py, |st| {
            (
                st.conn.clear(),
                st.addresses.take(),
                st.last_to.take(),
                std::mem::take(&mut st.buffer),
            )
        });
        drop(released);
    }
}
