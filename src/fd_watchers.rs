//! The fd table behind `add_reader`/`add_writer`: which handle runs when an fd is readable or
//! writable, kept in step with the poller's interest set.
//!
//! Runs on the loop thread with the GIL held. Methods never call into Python; handles that
//! leave the table are returned to the caller, which cancels and drops them after releasing
//! its borrow (dropping may run arbitrary Python code).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use crate::handles::Handle;
use crate::sys::{Event, Interest, Poller};

pub struct FdWatch {
    /// The object the user passed (socket, file, int), so `remove_reader(sock)` still finds
    /// the entry after `sock.close()` has made `sock.fileno()` return -1, as with selectors.
    pub fileobj: Py<PyAny>,
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
}

impl FdWatch {
    fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
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
    pub fn add(
        &mut self,
        poller: &Poller,
        fd: RawFd,
        fileobj: Py<PyAny>,
        dir: Direction,
        handle: Py<Handle>,
    ) -> Result<Replaced, (io::Error, Option<FdWatch>)> {
        if let Some(watch) = self.watches.get_mut(&fd) {
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
    /// the table does not watch the event's fd at all.
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
        self.watches.drain().map(|(_, w)| w).collect()
    }

    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    pub fn visit(&self, f: impl FnMut(&FdWatch)) {
        self.watches.values().for_each(f);
    }
}
