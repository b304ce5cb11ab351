//! The waker on Linux: an eventfd registered in the poller, which any thread may write
//! (`call_soon_threadsafe`) to end the loop's wait early.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::check;
use super::epoll::Poller;
use super::event::{Interest, WAKER_TOKEN};

/// An eventfd registered in the poller: any thread may `wake` the loop.
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new(poller: &Poller) -> io::Result<Waker> {
        // SAFETY: eventfd has no pointer arguments.
        let fd = check(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: `fd` is freshly created and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let waker = Waker { fd };
        waker.register(poller)?;
        Ok(waker)
    }

    /// Watch this waker in `poller` (a new waker is registered in the poller it was made for).
    pub fn register(&self, poller: &Poller) -> io::Result<()> {
        poller.set_interest(
            self.fd.as_raw_fd(),
            WAKER_TOKEN,
            Interest::default(),
            Interest {
                readable: true,
                writable: false,
            },
        )
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. A full counter (EAGAIN) still leaves the fd
        // readable, which is all a wake needs, so the result is deliberately ignored.
        unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    pub fn drain(&self) {
        let mut buf: u64 = 0;
        // SAFETY: reads at most 8 bytes into a valid u64; EAGAIN (nothing pending) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut buf).cast(), 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waker_ends_a_wait_from_another_thread() {
        let p = Poller::new().unwrap();
        let waker = std::sync::Arc::new(Waker::new(&p).unwrap());
        let w2 = waker.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            w2.wake();
        });
        let mut ev = Vec::new();
        assert_eq!(p.wait(&mut ev, Some(5.0)).unwrap(), 1);
        assert_eq!(ev[0].token, WAKER_TOKEN);
        waker.drain();
        assert_eq!(p.wait(&mut ev, Some(0.0)).unwrap(), 0);
        t.join().unwrap();
    }
}
