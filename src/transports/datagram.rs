//! `DatagramCore`: the Rust half of the datagram transport that `create_datagram_endpoint`
//! makes (UDP over IPv4/IPv6, Unix datagram sockets), with the standard library's
//! `_SelectorDatagramTransport` semantics: each datagram to `datagram_received(data, addr)`,
//! in order (taken several at a time, see `_read_ready`); `sendto` tries the socket first and buffers
//! `(bytes(data), addr)` only when it would block; OS errors of either direction go to
//! `error_received` and leave the endpoint open; anything else is fatal; flow control counts
//! each buffered datagram's size plus the release's `_header_size`.
//!
//! Loop thread, GIL held. Datagrams are received with `recvmmsg` into slots of the loop's
//! scratch buffer and copied into `bytes` of their size; the address objects of recent senders are reused, and
//! sending to one of them converts it once (`datagram_addresses.rs`: the echo pattern
//! `sendto(data, addr)`, also with several peers taking turns). Replies are not gathered
//! into a `sendmmsg`: `sendto` must send (or fail into `error_received`, or count in the
//! write buffer) before it returns, as the stdlib's does. Addresses the socket
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
use crate::sys::datagram::{self as datagram_io, SockAddr, RECV_BATCH};
use crate::trace::IoKind;

use super::common::{self, Connection, TransportCore};
use super::datagram_addresses::{AddressBook, Destination};
use super::write_side::{self, FlowControl, LOG_THRESHOLD_FOR_CONNLOST_WRITES};

/// At most this many datagrams are taken per readable event (libuv's number): replies sent
/// while a batch of several is delivered often bring the next datagrams back before it ends,
/// and reading those at once keeps the loop from sleeping in between; the bound keeps other callbacks and
/// other sockets from waiting behind a flood.
const READS_PER_EVENT: usize = 32;

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
    /// Datagrams received but not delivered yet, in order: a batch stopped by
    /// `pause_reading()` or by an exception in `datagram_received`.
    undelivered: Batch,
    buffer_size: usize,
    writer_installed: bool,
    flow: FlowControl,
    /// Recent senders and the address objects made for them.
    addresses: AddressBook,
    /// The last address object sent to that is not the book's, and what it converted to.
    last_to: Option<(Py<PyAny>, SockAddr)>,
}

/// Received datagrams as `datagram_received` takes them: `(data, addr)`, oldest first.
type Batch = VecDeque<(Py<PyAny>, Py<PyAny>)>;

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
            Some((dropped, std::mem::take(&mut st.undelivered), was_closing))
        });
        let Some((dropped, undelivered, was_closing)) = closed else {
            return Ok(());
        };
        // Dropped outside the borrow: an address object's finalizer may call the transport.
        let had_buffer = !dropped.is_empty();
        drop((dropped, undelivered));
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

    /// The datagrams waiting on the socket, up to `RECV_BATCH` (empty if there were none),
    /// each truncated to `max_size` as `sock.recvfrom(max_size)` would; errors are those
    /// `sock.recvfrom` would raise.
    fn receive(&self, py: Python<'_>) -> PyResult<Batch> {
        if self.native_family.is_none() {
            let received = self.receive_through_socket(py)?;
            return Ok(received
                .map(|(data, addr)| (data.unbind(), addr.unbind()))
                .into_iter()
                .collect());
        }
        let fd = self.sock.fd(py)?;
        let mut senders = [(0, SockAddr::empty()); RECV_BATCH];
        // Only `bytes` are made while the loop's buffer is borrowed: making an address may
        // run the GC, and with it finalizers that could want that buffer.
        let received = self
            .event_loop(py)
            .get()
            .with_scratch(py, RECV_BATCH * MAX_SIZE, |buf| {
                let count = datagram_io::recv_batch(fd, buf, MAX_SIZE, &mut senders)?;
                let datagrams = buf.chunks_exact(MAX_SIZE).zip(&senders);
                Ok::<_, std::io::Error>(
                    datagrams
                        .take(count.unwrap_or(0))
                        .map(|(slot, (size, _))| PyBytes::new(py, &slot[..*size]))
                        .collect::<Vec<_>>(),
                )
            })
            .map_err(os_error)?;
        let mut batch = Batch::with_capacity(received.len());
        for (data, (size, from)) in received.into_iter().zip(senders) {
            self.io_event(py, IoKind::Read, size);
            batch.push_back((
                data.into_any().unbind(),
                self.sender_object(py, from)?.unbind(),
            ));
        }
        Ok(batch)
    }

    /// Whether received datagrams go to the protocol now: not closing, not paused.
    fn delivering(&self, py: Python<'_>) -> bool {
        self.state
            .with_borrow(py, |st| !st.conn.closing && !st.conn.paused)
    }

    /// `datagram_received(data, addr)` for each of `batch` while `delivering()`; what is
    /// left waits in `undelivered`, unless the transport is closing.
    fn deliver(slf: &Bound<'_, Self>, batch: Batch) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let mut batch = batch.into_iter();
        let result = loop {
            let Some((data, addr)) = batch.next() else {
                break Ok(());
            };
            if let Some(protocol) = this.protocol(py) {
                let delivered = protocol
                    .bind(py)
                    .call_method1(intern!(py, "datagram_received"), (data, addr));
                if let Err(err) = delivered {
                    break Err(err);
                }
            }
            if !this.delivering(py) {
                break Ok(());
            }
        };
        let mut rest: Batch = batch.collect();
        if rest.is_empty() {
            return result;
        }
        let (closing, paused) = this.state.with_borrow_mut(py, |st| {
            if !st.conn.closing {
                // Anything a nested read queued came off the socket after these.
                rest.append(&mut st.undelivered);
                std::mem::swap(&mut st.undelivered, &mut rest);
            }
            (st.conn.closing, st.conn.paused)
        });
        drop(rest); // what closing dropped, outside the borrow
        if !closing && !paused {
            // An exception stopped delivery: the rest come next iteration.
            Self::schedule_delivery(slf)?;
        }
        result
    }

    /// Have `_read_ready` run next iteration for the undelivered datagrams, which the
    /// socket's readiness may no longer announce.
    fn schedule_delivery(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let callback = slf.getattr(intern!(py, "_read_ready"))?;
        let context = this.context().map(|c| c.bind(py).clone());
        LoopCore::call_soon(this.event_loop(py), callback, None, context)?;
        Ok(())
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
                undelivered: Batch::new(),
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

    /// `_SelectorDatagramTransport._read_ready`, for every datagram waiting: one
    /// `recvmmsg` takes up to `RECV_BATCH` of them and each goes to `datagram_received` in
    /// order, as if the stdlib's reader had run once per datagram, back to back. Delivery
    /// stops when a callback closes the transport (the rest are dropped, as the socket's
    /// queue is when the stdlib closes it) or pauses reading (the rest wait for
    /// `resume_reading`); after an exception the rest come next iteration, as they would
    /// from the socket.
    fn _read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // A stale call (scheduled before a pause or a close) reads nothing, as the stdlib's
        // removed reader would not run.
        if !this.delivering(py) {
            return Ok(());
        }
        let undelivered = this
            .state
            .with_borrow_mut(py, |st| std::mem::take(&mut st.undelivered));
        if !undelivered.is_empty() {
            return Self::deliver(slf, undelivered);
        }
        let mut taken = 0;
        while taken < READS_PER_EVENT {
            let batch = match this.receive(py) {
                Ok(batch) if batch.is_empty() => break,
                Ok(batch) => batch,
                Err(err) if err.is_instance_of::<PyOSError>(py) => {
                    return this.error_received(py, err)
                }
                Err(err) => {
                    return common::fatal_error(
                        this,
                        py,
                        err,
                        "Fatal read error on datagram transport",
                    )
                }
            };
            let single = batch.len() == 1;
            taken += batch.len();
            Self::deliver(slf, batch)?;
            // A socket that had one datagram waiting gets them one at a time (a client with
            // one request in flight): reading again would only find nothing, a syscall lost.
            if single || !this.delivering(py) {
                break;
            }
        }
        Ok(())
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
        let py = slf.py();
        let was_paused = slf.get().state.with_borrow(py, |st| st.conn.paused);
        common::resume_reading(slf)?;
        let waiting = slf
            .get()
            .state
            .with_borrow(py, |st| !st.undelivered.is_empty());
        if was_paused && waiting && slf.get().delivering(py) {
            Self::schedule_delivery(slf)?;
        }
        Ok(())
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let closed = self.state.with_borrow_mut(py, |st| {
            if st.conn.closing {
                return None;
            }
            st.conn.closing = true;
            let drained = st.buffer.is_empty();
            if drained {
                st.conn.conn_lost.record();
            }
            // Not delivered now: the stdlib's socket queue is dropped with the socket.
            Some((drained, std::mem::take(&mut st.undelivered)))
        });
        let Some((drained, undelivered)) = closed else {
            return Ok(());
        };
        drop(undelivered);
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
            (
                st.addresses.take(),
                st.last_to.take(),
                std::mem::take(&mut st.undelivered),
            )
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
            for (data, addr) in &st.undelivered {
                visit.call(data)?;
                visit.call(addr)?;
            }
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
                std::mem::take(&mut st.undelivered),
            )
        });
        drop(released);
    }
}
