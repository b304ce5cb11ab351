//! Non-blocking reads and writes for the transports and the socket operations: recv, send,
//! a connect's pending error (`SO_ERROR`),
//! vectored send and shutdown for sockets; read and vectored write for pipes and character
//! devices; `FIONREAD`; Linux's pipe sizing (`F_SETPIPE_SZ`).
//!
//! EINTR is retried; "would block" (EAGAIN) comes back as `Ok(None)` rather than an error
//! ([`retry_nonblocking`]). Sends use `MSG_NOSIGNAL`: a peer that went away is an `EPIPE`
//! error, never a SIGPIPE. Any thread; no GIL needed.

use std::io;
use std::os::fd::RawFd;

use super::{check, retry_nonblocking};

/// Most slices one vectored write takes (Linux's IOV_MAX is 1024): the one cap for sockets
/// and pipes, and for what a transport's buffer hands over at once.
pub const MAX_IOVECS: usize = 1024;

/// recv into raw memory.
///
/// # Safety
/// `ptr` must point to `len` writable bytes that stay valid for the call.
pub unsafe fn recv_raw(fd: RawFd, ptr: *mut libc::c_void, len: usize) -> io::Result<Option<usize>> {
    // SAFETY: the caller guarantees `ptr`/`len` describe writable memory.
    retry_nonblocking(|| unsafe { libc::recv(fd, ptr, len, 0) })
}

pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid, writable slice for the duration of the call.
    unsafe { recv_raw(fd, buf.as_mut_ptr().cast(), buf.len()) }
}

pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid slice for the duration of the call; send only reads it.
    retry_nonblocking(|| unsafe {
        libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
    })
}

/// The first `MAX_IOVECS` slices as iovecs, which borrow them: use them while `bufs` lives.
fn iovecs(bufs: &[&[u8]]) -> Vec<libc::iovec> {
    bufs.iter()
        .take(MAX_IOVECS)
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect()
}

/// One `sendmsg` of up to `MAX_IOVECS` slices; returns how many bytes the kernel took.
pub fn send_vectored(fd: RawFd, bufs: &[&[u8]]) -> io::Result<Option<usize>> {
    if bufs.len() == 1 {
        return send(fd, bufs[0]);
    }
    let iov = iovecs(bufs);
    // SAFETY: msghdr is plain data; zeroed is a valid "no name, no control data" header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr().cast_mut();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: every iovec points into a slice borrowed for this call, and sendmsg only reads
    // through them; `msg` and `iov` outlive the call.
    retry_nonblocking(|| unsafe { libc::sendmsg(fd, &raw const msg, libc::MSG_NOSIGNAL) })
}

/// Bytes queued for reading on `fd` (`FIONREAD`); None if the kernel won't say.
pub fn bytes_available(fd: RawFd) -> Option<usize> {
    let mut count: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which points to a live c_int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut count) };
    (rc == 0 && count >= 0).then_some(count as usize)
}

/// `read(2)`, for pipes (recv only works on sockets).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid, writable slice for the duration of the call.
    retry_nonblocking(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// One `writev(2)` of up to `MAX_IOVECS` slices, for pipes.
pub fn write_vectored(fd: RawFd, bufs: &[&[u8]]) -> io::Result<Option<usize>> {
    let iov = iovecs(bufs);
    // SAFETY: every iovec points into a slice borrowed for this call and writev only reads
    // through them; `iov` outlives the call.
    retry_nonblocking(|| unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) })
}

/// Ask for a bigger pipe buffer (`F_SETPIPE_SZ`, Linux only; elsewhere nothing); best effort — a non-pipe, the per-user
/// pipe-buffer budget or `pipe-max-size` may refuse, and then the pipe just keeps its size.
#[cfg(target_os = "linux")]
pub fn grow_pipe(fd: RawFd, size: usize) {
    // SAFETY: fcntl with an integer argument; failure is reported through the return value,
    // which is deliberately ignored.
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size as libc::c_int) };
}

#[cfg(not(target_os = "linux"))]
pub fn grow_pipe(_fd: RawFd, _size: usize) {}

pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown takes no pointers; an invalid fd is reported as an error.
    check(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(drop)
}

/// `getsockopt(fd, SOL_SOCKET, SO_ERROR)`: the pending error of a non-blocking connect (0 once
/// it succeeded). Reading it clears it, as the socket module's `getsockopt` does.
pub fn socket_error(fd: RawFd) -> io::Result<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid, writable and sized for an int option value.
    check(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&raw mut err).cast(),
            &raw mut len,
        )
    })?;
    Ok(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn vectored_send_then_recv_round_trip() {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), None);
        let sent = send_vectored(a.as_raw_fd(), &[b"hello ", b"vectored ", b"world"]).unwrap();
        assert_eq!(sent, Some(20));
        let got = recv(b.as_raw_fd(), &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..got], b"hello vectored world");
    }

    #[test]
    fn send_to_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = UnixStream::pair().unwrap();
        drop(b);
        let err = send(a.as_raw_fd(), b"x").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPIPE));
    }

    #[test]
    fn pipe_read_and_vectored_write() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) };
        assert_eq!(rc, 0);
        let mut buf = [0u8; 16];
        assert_eq!(read(fds[0], &mut buf).unwrap(), None);
        assert_eq!(write_vectored(fds[1], &[b"ab", b"cd"]).unwrap(), Some(4));
        assert_eq!(read(fds[0], &mut buf).unwrap(), Some(4));
        assert_eq!(&buf[..4], b"abcd");
        // SAFETY: closing the two descriptors created above, once each.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }

    #[test]
    fn shutdown_write_gives_the_peer_eof() {
        let (a, b) = UnixStream::pair().unwrap();
        shutdown_write(a.as_raw_fd()).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), Some(0));
    }
}
