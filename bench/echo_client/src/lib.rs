//! What the bench's native echo programs share: pinning to a core, epoll registration, and
//! turning a C return value into an `io::Result`. Plain std + libc, one thread each.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A C call's result: the value, or the OS error it left in errno.
pub fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// Run this thread on `cpu` only.
pub fn pin_to(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t; CPU_SET ignores a CPU beyond its capacity.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; 0 means this thread.
    check(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }).map(|_| ())
}

/// A new epoll set, closed when the returned owner is dropped.
pub fn new_epoll() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 returns a new fd or -1.
    let epoll = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: `epoll` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(epoll) })
}

/// Watch `fd` for readability (level-triggered), reported with `token`.
pub fn watch(epoll: RawFd, fd: RawFd, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: both fds are open; `event` is a valid epoll_event for the call.
    check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) }).map(|_| ())
}

/// Wait in `epoll` (`timeout_ms`: -1 forever, 0 not at all) and fill `events`; returns how
/// many are ready, 0 after a signal.
pub fn wait(epoll: RawFd, events: &mut [libc::epoll_event], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `events` has room for `events.len()` entries, which epoll_wait fills.
    let ready = unsafe {
        libc::epoll_wait(
            epoll,
            events.as_mut_ptr(),
            events.len() as libc::c_int,
            timeout_ms,
        )
    };
    match check(ready) {
        Ok(n) => Ok(n as usize),
        Err(err) if err.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(err) => Err(err),
    }
}

/// Block until `fd` is writable (a full send buffer).
pub fn wait_writable(fd: RawFd) -> io::Result<()> {
    let mut writable = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    check(unsafe { libc::poll(&mut writable, 1, -1) }).map(|_| ())
}
