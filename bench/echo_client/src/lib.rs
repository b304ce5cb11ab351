//! What the bench's native echo programs share: pinning to a core, epoll registration, and
//! turning a C return value into an `io::Result`. Plain std + libc, one thread each.

use std::fmt::Display;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

/// What a load client is asked to do: `PORT MESSAGE_SIZE PEERS ROUND_TRIPS_PER_PEER WARM_UP`.
pub struct ClientArgs {
    pub port: u16,
    pub message_size: usize,
    /// Connections (TCP) or endpoints (UDP), one message in flight on each.
    pub peers: usize,
    pub round_trips: usize,
    pub warm_up: usize,
}

/// The program's `count` arguments, all numbers; `usage` when there are not `count`.
pub fn numbers(usage: &str, count: usize) -> Result<Vec<usize>, String> {
    let values: Vec<String> = std::env::args().skip(1).collect();
    if values.len() != count {
        return Err(format!("usage: {usage}"));
    }
    values
        .iter()
        .enumerate()
        .map(|(i, v)| v.parse().map_err(|e| format!("argument {}: {e}", i + 1)))
        .collect()
}

/// A load client's arguments (`peers` names the PEERS argument in the usage line).
pub fn client_args(program: &str, peers: &str) -> Result<ClientArgs, String> {
    let usage = format!("{program} PORT MESSAGE_SIZE {peers} ROUND_TRIPS_PER_PEER WARM_UP");
    let values = numbers(&usage, 5)?;
    Ok(ClientArgs {
        port: u16::try_from(values[0]).map_err(|e| e.to_string())?,
        message_size: values[1],
        peers: values[2],
        round_trips: values[3],
        warm_up: values[4],
    })
}

/// Exit as the bench expects: `Ok` prints its value (if any) and succeeds, a usage error
/// exits 2, an I/O error is reported as `program: error` and fails.
pub fn finish<T: Display>(program: &str, outcome: Result<io::Result<T>, String>) -> ExitCode {
    match outcome {
        Ok(Ok(value)) => {
            let text = value.to_string();
            if !text.is_empty() {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Ok(Err(err)) => {
            eprintln!("{program}: {err}");
            ExitCode::FAILURE
        }
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

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
