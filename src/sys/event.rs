//! Readiness as the loop sees it, whatever the OS backend: which fd (its token), and whether
//! its reader and/or writer should run; what a registration asks for.

/// Token reported for the waker's own events.
pub const WAKER_TOKEN: u64 = u64::MAX;

/// Longest single wait, as in the standard loop (`MAXIMUM_SELECT_TIMEOUT`, one day).
pub const MAX_TIMEOUT: f64 = 24.0 * 3600.0;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub readable: bool,
    pub writable: bool,
}

impl Interest {
    #[cfg(target_os = "linux")]
    pub(crate) fn epoll_bits(self) -> u32 {
        let mut bits = 0;
        if self.readable {
            bits |= libc::EPOLLIN as u32;
        }
        if self.writable {
            bits |= libc::EPOLLOUT as u32;
        }
        bits
    }

    pub fn is_empty(self) -> bool {
        !self.readable && !self.writable
    }
}

/// One readiness report: which fd, and whether its reader and/or writer should run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub readable: bool,
    pub writable: bool,
}

impl Event {
    #[cfg(target_os = "linux")]
    pub(crate) fn from_epoll(ev: &libc::epoll_event) -> Event {
        let bits = ev.events;
        // Like the stdlib's EpollSelector: anything but plain EPOLLIN (HUP, ERR) also wakes the
        // writer, anything but plain EPOLLOUT also wakes the reader.
        Event {
            token: ev.u64,
            readable: bits & !(libc::EPOLLOUT as u32) != 0,
            writable: bits & !(libc::EPOLLIN as u32) != 0,
        }
    }
}
