//! The poller on Linux: a thin, level-triggered epoll wrapper, in pure Rust.
//!
//! asyncio's `add_reader`/`add_writer` are level-triggered (a callback runs on every iteration
//! while its fd stays ready), so this is plain epoll without `EPOLLET` or `EPOLLONESHOT`: no
//! re-arming syscall per event. Interest is set per fd with [`Poller::set_interest`], which adds,
//! modifies or deletes the registration as needed. Deleting tolerates fds that the user closed
//! behind the loop's back (epoll forgets those by itself); modifying one is an error, because
//! its number may belong to another file by now.
//!
//! `wait` is the only blocking call; the loop calls it with the GIL released. The waker
//! (`eventfd.rs`) is written from any thread (`call_soon_threadsafe`) to end a wait early.
//!
//! ```
//! use _core::sys::{Interest, Poller};
//! let poller = Poller::new().unwrap();
//! let mut events = Vec::with_capacity(8);
//! assert_eq!(poller.wait(&mut events, Some(0.0)).unwrap(), 0);
//! ```

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::check;
use super::event::{Event, Interest, MAX_TIMEOUT};

pub struct Poller {
    epoll: OwnedFd,
}

impl Poller {
    pub fn new() -> io::Result<Poller> {
        // SAFETY: epoll_create1 has no pointer arguments.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epoll })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, bits: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: bits,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; the epoll fd is
        // owned by `self`. An invalid `fd` is reported as an error, not undefined behaviour.
        check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &raw mut ev) }).map(drop)
    }

    /// Register `fd` for `new` interest, given what it was registered for before (`old`).
    pub fn set_interest(
        &self,
        fd: RawFd,
        token: u64,
        old: Interest,
        new: Interest,
    ) -> io::Result<()> {
        if new.is_empty() {
            if old.is_empty() {
                return Ok(());
            }
            return match self.ctl(libc::EPOLL_CTL_DEL, fd, 0, token) {
                // Closed (EBADF), already forgotten by epoll (ENOENT), or the number now names
                // a file epoll cannot watch (EPERM: a regular file took it after the watched
                // file was closed) is what we wanted, as the standard library's selector,
                // which ignores any error from unregister.
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EBADF | libc::ENOENT | libc::EPERM)
                    ) =>
                {
                    Ok(())
                }
                other => other,
            };
        }
        let bits = new.epoll_bits();
        if old.is_empty() {
            match self.ctl(libc::EPOLL_CTL_ADD, fd, bits, token) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                    self.ctl(libc::EPOLL_CTL_MOD, fd, bits, token)
                }
                other => other,
            }
        } else {
            // ENOENT: the file registered under this number was closed (epoll forgot it) and
            // the number may now be another file's. Registering that file here would hand it
            // to the old file's watchers, so the error goes back to the caller, which drops
            // the stale entry — as the standard library's selector does.
            self.ctl(libc::EPOLL_CTL_MOD, fd, bits, token)
        }
    }

    /// Delete `fd`'s registration without tolerating anything: Ok only if epoll had one for
    /// the file that has this number now.
    pub fn forget(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, fd as u64)
    }

    /// Wait for readiness. `timeout` in seconds (`None` waits indefinitely); it is rounded up to
    /// the next millisecond so a wait never ends before a timer is due. Returns the number of
    /// events appended to `events` (which is cleared first). EINTR is returned as an error so
    /// the caller can run Python's signal handlers.
    pub fn wait(&self, events: &mut Vec<Event>, timeout: Option<f64>) -> io::Result<usize> {
        const CAPACITY: usize = 1024;
        let mut raw: [MaybeUninit<libc::epoll_event>; CAPACITY] =
            [const { MaybeUninit::uninit() }; CAPACITY];
        let timeout_ms: libc::c_int = match timeout {
            None => -1,
            // Zero, negative and NaN timeouts all mean "don't block".
            Some(t) if t.is_nan() || t <= 0.0 => 0,
            Some(t) => (t.min(MAX_TIMEOUT) * 1000.0).ceil() as libc::c_int,
        };
        // SAFETY: `raw` is a writable buffer of CAPACITY epoll_events; epoll writes at most
        // `maxevents` entries into it.
        let waited = check(unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                raw.as_mut_ptr().cast(),
                CAPACITY as libc::c_int,
                timeout_ms,
            )
        });
        events.clear();
        let n = waited? as usize;
        events.extend(raw[..n].iter().map(|ev| {
            // SAFETY: epoll_wait initialised the first `n` entries.
            Event::from_epoll(unsafe { ev.assume_init_ref() })
        }));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::event::Interest;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned by nothing else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    const READ: Interest = Interest {
        readable: true,
        writable: false,
    };
    const WRITE: Interest = Interest {
        readable: false,
        writable: true,
    };

    #[test]
    fn pipe_readable_is_level_triggered() {
        let p = Poller::new().unwrap();
        let (r, w) = pipe();
        p.set_interest(r.as_raw_fd(), 7, Interest::default(), READ)
            .unwrap();
        let mut ev = Vec::new();
        assert_eq!(p.wait(&mut ev, Some(0.0)).unwrap(), 0);
        // SAFETY: writes one byte from a valid buffer.
        unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        for _ in 0..2 {
            assert_eq!(p.wait(&mut ev, Some(1.0)).unwrap(), 1);
            assert_eq!(
                ev[0],
                Event {
                    token: 7,
                    readable: true,
                    writable: false
                }
            );
        }
        p.set_interest(r.as_raw_fd(), 7, READ, Interest::default())
            .unwrap();
        assert_eq!(p.wait(&mut ev, Some(0.0)).unwrap(), 0);
    }

    #[test]
    fn writer_and_modify() {
        let p = Poller::new().unwrap();
        let (_r, w) = pipe();
        p.set_interest(w.as_raw_fd(), 3, Interest::default(), WRITE)
            .unwrap();
        let mut ev = Vec::new();
        assert_eq!(p.wait(&mut ev, Some(1.0)).unwrap(), 1);
        assert!(ev[0].writable);
        p.set_interest(w.as_raw_fd(), 3, WRITE, READ).unwrap();
        assert_eq!(p.wait(&mut ev, Some(0.0)).unwrap(), 0);
    }

    #[test]
    fn closed_fd_is_forgotten_quietly() {
        let p = Poller::new().unwrap();
        let (r, _w) = pipe();
        let raw = r.as_raw_fd();
        p.set_interest(raw, 1, Interest::default(), READ).unwrap();
        drop(r);
        p.set_interest(raw, 1, READ, Interest::default()).unwrap();
    }

    #[test]
    fn an_fd_number_a_regular_file_took_over_is_forgotten_quietly() {
        let p = Poller::new().unwrap();
        let (r, _w) = pipe();
        let raw = r.as_raw_fd();
        p.set_interest(raw, 1, Interest::default(), READ).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        // SAFETY: dup2 closes the pipe end behind `r` and puts a duplicate of the file under
        // its number, which `r` then owns and closes once.
        assert_eq!(unsafe { libc::dup2(file.as_raw_fd(), raw) }, raw);
        let _now_the_file = r;
        // epoll_ctl(DEL) on a regular file fails with EPERM: nothing of ours is registered.
        p.set_interest(raw, 1, READ, Interest::default()).unwrap();
    }

    #[test]
    fn modifying_a_closed_fd_is_an_error_not_a_new_registration() {
        let p = Poller::new().unwrap();
        let (r, _w) = pipe();
        let (r2, w2) = pipe();
        p.set_interest(r.as_raw_fd(), 1, Interest::default(), READ)
            .unwrap();
        // SAFETY: `r` is this test's own descriptor: dup2 closes its file (epoll forgets the
        // registration) and puts r2's file under the same number, which `r` keeps owning.
        let duplicated = unsafe { libc::dup2(r2.as_raw_fd(), r.as_raw_fd()) };
        assert_eq!(duplicated, r.as_raw_fd());
        // SAFETY: writes one byte from a valid buffer.
        unsafe { libc::write(w2.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        let err = p.set_interest(r.as_raw_fd(), 1, READ, READ).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let mut ev = Vec::new();
        assert_eq!(p.wait(&mut ev, Some(0.0)).unwrap(), 0);
    }

    #[test]
    fn timeout_rounds_up_so_waits_are_never_short() {
        let p = Poller::new().unwrap();
        let mut ev = Vec::new();
        let t0 = std::time::Instant::now();
        p.wait(&mut ev, Some(0.0015)).unwrap();
        assert!(t0.elapsed() >= std::time::Duration::from_micros(1500));
    }
}
