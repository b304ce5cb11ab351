//! `AddressBook`: the senders a datagram endpoint heard from lately, each with the address
//! object `datagram_received` got for it, so that a datagram from a known sender reuses that
//! object instead of formatting a new one, and `sendto(data, addr)` with that very object
//! (the echo pattern, also when several peers take turns) skips converting it back.
//!
//! The object for a sender is made by `SockAddr::to_python` (what `socket.recvfrom` returns;
//! tuples and strings, immutable). What it converts to for a send is what
//! `SockAddr::from_python` makes of it — the socket module's own conversion, computed the
//! first time the object is sent to — not the received address, so a send goes exactly where
//! `socket.sendto(data, addr)` would send it. A small fixed number of entries, replaced in
//! turn: a server with many peers keeps converting, as the standard library always does.
//!
//! Loop thread, GIL held; plain data otherwise (the caller drops what it evicts outside its
//! borrows, since dropping an object may run Python code).

use pyo3::prelude::*;

use crate::sys::datagram::SockAddr;

/// Peers remembered at once (a lookup compares at most this many addresses).
const CAPACITY: usize = 16;

/// Where `socket.sendto(data, object)` sends.
#[derive(Clone, Copy)]
pub enum Destination {
    /// The address `SockAddr::from_python` made of the object.
    Native(SockAddr),
    /// An address only the socket module converts (a Unix path, say).
    SocketModule,
}

impl Destination {
    /// `SockAddr::from_python` of `object`, for a socket of `family`.
    pub fn of(object: &Bound<'_, PyAny>, family: i32) -> Destination {
        SockAddr::from_python(object, family).map_or(Destination::SocketModule, Destination::Native)
    }
}

struct Entry {
    from: SockAddr,
    object: Py<PyAny>,
    /// Where sending to `object` goes, once computed.
    to: Option<Destination>,
}

#[derive(Default)]
pub struct AddressBook {
    entries: Vec<Entry>,
    /// The entry the next new sender replaces, once the book is full.
    next: usize,
}

impl AddressBook {
    /// The object made for `from` earlier, if it is still in the book.
    pub fn object_for<'py>(&self, py: Python<'py>, from: &SockAddr) -> Option<Bound<'py, PyAny>> {
        self.entries
            .iter()
            .find(|e| e.from.same_as(from))
            .map(|e| e.object.bind(py).clone())
    }

    /// Remember `object` as what `from` converts to; returns the object it evicted, for the
    /// caller to drop outside its borrow.
    pub fn remember(&mut self, from: SockAddr, object: Py<PyAny>) -> Option<Py<PyAny>> {
        let entry = Entry {
            from,
            object,
            to: None,
        };
        if self.entries.len() < CAPACITY {
            self.entries.push(entry);
            return None;
        }
        let slot = self.next;
        self.next = (slot + 1) % CAPACITY;
        Some(std::mem::replace(&mut self.entries[slot], entry).object)
    }

    /// Where sending to `object` goes, when `object` is one of the book's and that was
    /// computed before.
    pub fn destination_of(&self, object: &Bound<'_, PyAny>) -> Option<Destination> {
        self.entries
            .iter()
            .find(|e| e.object.is(object))
            .and_then(|e| e.to)
    }

    /// Record what sending to `object` converts to; false if `object` is not the book's.
    pub fn set_destination(&mut self, object: &Bound<'_, PyAny>, to: Destination) -> bool {
        let entry = self.entries.iter_mut().find(|e| e.object.is(object));
        entry.map(|e| e.to = Some(to)).is_some()
    }

    /// Forget everything; returns the objects for the caller to drop outside its borrow.
    pub fn take(&mut self) -> Vec<Py<PyAny>> {
        self.next = 0;
        self.entries.drain(..).map(|e| e.object).collect()
    }

    pub fn traverse(&self, visit: &pyo3::gc::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        for entry in &self.entries {
            visit.call(&entry.object)?;
        }
        Ok(())
    }
}
