//! The fd table behind `add_reader`/`add_writer`: which handle runs when an fd is readable or
//! writable, kept in step with the poller's interest set.
//!
//! Runs on the loop thread with the GIL held. Methods never call into Python; handles that
//! leave the table are returned to the caller, which cancels and drops them after releasing
//! its borrow (dropping may run arbitrary Python code).
//!
//! A finished `sock_recv` *parks* its reader instead of removing it: the handle leaves the
//! table but the fd stays registered for reading, so the socket's next waiting `sock_recv`
//! costs no `epoll_ctl` (a request/response loop otherwise adds and deletes the registration
//! on every round trip). The parked entry remembers the socket only weakly; a later reader
//! reuses the registration only for that same socket object while it still owns the number
//! (a socket object once closed never owns a number again, so the file, and with it the
//! registration, is the one parked). Anything else finds the registration deleted first. An
//! event on a parked fd (data nobody asked for yet) deletes the registration, so an
//! unread socket cannot keep waking a level-triggered poller.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyWeakrefReference;

use crate::handles::Handle;
use crate::sys::{Event, Interest, Poller};

pub struct FdWatch {
    /// The object the user passed (socket, file, int), so `remove_reader(sock)` still finds
    /// the entry after `sock.close()` has made `sock.fileno()` return -1, as with selectors.
    pub fileobj: Py<PyAny>,
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
    /// Set while the entry is parked (no handles, still registered for reading): a weak
    /// reference to the socket whose `sock_recv` parked it.
    pub parked_for: Option<Py<PyWeakrefReference>>,
}

impl FdWatch {
    /// What the poller has registered for the fd.
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some() || self.parked_for.is_some(),
            writable: self.writer.is_some(),
        }
    }

    /// Is this entry parked by `owner` (the same socket object)?
    fn parked_by(&self, owner: Option<&Bound<'_, PyAny>>) -> bool {
        let (Some(weak), Some(owner)) = (&self.parked_for, owner) else {
            return false;
        };
        // SAFETY: `weak` is a live weak reference object this entry owns; `wr_object` is its
        // referent, or None once that died. Only the address is compared.
        let referent = unsafe { (*weak.as_ptr().cast::<ffi::PyWeakReference>()).wr_object };
        referent == owner.as_ptr()
    }
}

/// What `FdTable::add` displaced: the previous handle for that direction and the previous
/// file object.
pub type Replaced = (Option<Py<Handle>>, Option<Py<PyAny>>);

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

#[derive(Default)]
pub struct FdTable {
    watches: HashMap<RawFd, FdWatch>,
    /// How many of `watches` are parked.
    parked: usize,
}

impl FdTable {
    fn slot(watch: &mut FdWatch, dir: Direction) -> &mut Option<Py<Handle>> {
        match dir {
            Direction::Read => &mut watch.reader,
            Direction::Write => &mut watch.writer,
        }
    }

    /// Install `handle` for `dir` on `fd`. Returns the handle it replaces and the file object
    /// it displaced, if any, for the caller to release outside its borrow. If the poller
    /// refuses the existing entry (its file was closed behind the loop's back), the entry is
    /// dropped and returned with the error: its watchers belong to a file that is gone.
    /// `owner` is the socket a `sock_recv` waits on, which may take over the entry it parked.
    pub fn add(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        fileobj: Py<PyAny>,
        dir: Direction,
        handle: Py<Handle>,
        owner: Option<&Bound<'_, PyAny>>,
    ) -> Result<Replaced, (io::Error, Option<FdWatch>)> {
        if let Some(watch) = self.watches.get_mut(&fd) {
            if watch.parked_for.is_some() {
                if dir == Direction::Read && watch.parked_by(owner) {
                    watch.parked_for = None;
                    self.parked -= 1;
                    watch.reader = Some(handle);
                    let old_fileobj = std::mem::replace(&mut watch.fileobj, fileobj);
                    return Ok((None, Some(old_fileobj)));
                }
                // Not vouched for: the registration may be a closed file's. Start afresh.
                let parked = self.unpark(poller, fd);
                let added = self.add(poller, fd, fileobj, dir, handle, None);
                return added.map(|(replaced, _)| (replaced, parked.map(|w| w.fileobj)));
            }
            let old_interest = watch.interest();
            let mut new_interest = old_interest;
            match dir {
                Direction::Read => new_interest.readable = true,
                Direction::Write => new_interest.writable = true,
            }
            if let Err(err) = poller.set_interest(fd, fd as u64, old_interest, new_interest) {
                return Err((err, self.watches.remove(&fd)));
            }
            let replaced = Self::slot(watch, dir).replace(handle);
            let old_fileobj = std::mem::replace(&mut watch.fileobj, fileobj);
            Ok((replaced, Some(old_fileobj)))
        } else {
            let mut watch = FdWatch {
                fileobj,
                reader: None,
                writer: None,
                parked_for: None,
            };
            *Self::slot(&mut watch, dir) = Some(handle);
            if let Err(err) =
                poller.set_interest(fd, fd as u64, Interest::default(), watch.interest())
            {
                return Err((err, Some(watch)));
            }
            self.watches.insert(fd, watch);
            Ok((None, None))
        }
    }

    /// Remove the `dir` handle of `fd`. Returns the removed handle (None if there was none), the
    /// whole entry if it is now empty or the poller refused it (see `add`), and the poller's
    /// verdict; the handles are returned even on error so the caller drops them outside its
    /// borrow. Without a poller (a loop inherited by a forked child, whose epoll instance is
    /// the parent's) only the table changes.
    pub fn remove(
        &mut self,
        poller: Option<&Poller>,
        fd: RawFd,
        dir: Direction,
    ) -> (Option<Py<Handle>>, Option<FdWatch>, io::Result<()>) {
        let Some(watch) = self.watches.get_mut(&fd) else {
            return (None, None, Ok(()));
        };
        if watch.parked_for.is_some() {
            let parked = match poller {
                Some(poller) => self.unpark(poller, fd),
                None => self.drop_parked(fd),
            };
            return (None, parked, Ok(()));
        }
        let old_interest = watch.interest();
        let removed = Self::slot(watch, dir).take();
        if removed.is_none() {
            return (None, None, Ok(()));
        }
        let new_interest = watch.interest();
        let result = match poller {
            Some(poller) => poller.set_interest(fd, fd as u64, old_interest, new_interest),
            None => Ok(()),
        };
        let emptied = if new_interest.is_empty() || result.is_err() {
            self.watches.remove(&fd)
        } else {
            None
        };
        (removed, emptied, result)
    }

    /// Take `fd`'s reader out of the table but leave the fd registered for reading, for the
    /// next `sock_recv` on `owner` (see the module doc). An entry that also has a writer is
    /// not parked: the reader is removed as by `remove`. Returns what `remove` returns.
    pub fn park_reader(
        &mut self,
        poller: Option<&Poller>,
        fd: RawFd,
        owner: &Bound<'_, PyAny>,
    ) -> (Option<Py<Handle>>, Option<FdWatch>, io::Result<()>) {
        let parkable = self
            .watches
            .get(&fd)
            .is_some_and(|w| w.reader.is_some() && w.writer.is_none());
        if !parkable || poller.is_none() {
            return self.remove(poller, fd, Direction::Read);
        }
        let weak = match PyWeakrefReference::new(owner) {
            Ok(weak) => weak.unbind(),
            // Not weakly referenceable: nothing could vouch for the registration later.
            Err(_) => return self.remove(poller, fd, Direction::Read),
        };
        let watch = self.watches.get_mut(&fd).expect("checked parkable above");
        watch.parked_for = Some(weak);
        self.parked += 1;
        (watch.reader.take(), None, Ok(()))
    }

    /// Delete a parked entry and its registration (errors mean epoll forgot it already).
    fn unpark(&mut self, poller: &Poller, fd: RawFd) -> Option<FdWatch> {
        let watch = self.drop_parked(fd)?;
        let _ = poller.set_interest(fd, fd as u64, watch.interest(), Interest::default());
        Some(watch)
    }

    /// Remove `fd`'s entry from the table if it is parked, leaving the poller alone (for a
    /// registration the caller deletes itself, or a poller the loop cannot touch).
    pub fn drop_parked(&mut self, fd: RawFd) -> Option<FdWatch> {
        self.watches.get(&fd)?.parked_for.as_ref()?;
        self.parked -= 1;
        self.watches.remove(&fd)
    }

    /// Find the fd registered for exactly this object (a closed socket no longer knows its fd).
    pub fn fd_of_object(&self, obj: &Bound<'_, PyAny>) -> Option<RawFd> {
        self.watches
            .iter()
            .find(|(_, w)| w.fileobj.is(obj))
            .map(|(fd, _)| *fd)
    }

    pub fn handle(&self, py: Python<'_>, fd: RawFd, dir: Direction) -> Option<Py<Handle>> {
        let watch = self.watches.get(&fd)?;
        let slot = match dir {
            Direction::Read => &watch.reader,
            Direction::Write => &watch.writer,
        };
        slot.as_ref().map(|h| h.clone_ref(py))
    }

    pub fn has(&self, fd: RawFd, dir: Direction) -> bool {
        self.watches.get(&fd).is_some_and(|w| match dir {
            Direction::Read => w.reader.is_some(),
            Direction::Write => w.writer.is_some(),
        })
    }

    /// The handles an event wakes, in reader-then-writer order (the stdlib's order). False if
    /// the table does not watch the event's fd at all, or only keeps it parked.
    pub fn ready_handles(
        &self,
        py: Python<'_>,
        ev: &Event,
        out: &mut Vec<(RawFd, Direction, Py<Handle>)>,
    ) -> bool {
        let fd = ev.token as RawFd;
        let Some(watch) = self.watches.get(&fd) else {
            return false;
        };
        if watch.parked_for.is_some() {
            return false;
        }
        if ev.readable {
            if let Some(h) = &watch.reader {
                out.push((fd, Direction::Read, h.clone_ref(py)));
            }
        }
        if ev.writable {
            if let Some(h) = &watch.writer {
                out.push((fd, Direction::Write, h.clone_ref(py)));
            }
        }
        true
    }

    /// Every fd and what it is watched for (to register them all in a rebuilt poller).
    pub fn interests(&self) -> impl Iterator<Item = (RawFd, Interest)> + '_ {
        self.watches.iter().map(|(fd, w)| (*fd, w.interest()))
    }

    pub fn drain_all(&mut self) -> Vec<FdWatch> {
        self.parked = 0;
        self.watches.drain().map(|(_, w)| w).collect()
    }

    /// The fds with a reader or writer (parked entries are not watched by anyone).
    pub fn len(&self) -> usize {
        self.watches.len() - self.parked
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn visit(&self, f: impl FnMut(&FdWatch)) {
        self.watches.values().for_each(f);
    }
}
