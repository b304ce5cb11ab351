//! Datagram syscalls that carry an address (`recvfrom`, `recvmmsg`, `sendto`) and the socket addresses
//! they carry, converted between Python and C exactly as the `socket` module converts them.
//!
//! `SockAddr::from_python` takes only what it can convert with the same result as
//! `socket.sendto` — an IP literal and an `int` port in an exact tuple, for the socket's own
//! family — and answers `None` for everything else (host names, `''`, `'<broadcast>'`,
//! scoped IPv6 names, Unix paths), which the caller leaves to `socket.sendto` itself.
//! `SockAddr::to_python` is `makesockaddr` of CPython's `socketmodule.c` for AF_INET,
//! AF_INET6 and AF_UNIX. Syscalls go through the `libc` crate (interposable), retry EINTR and
//! report "would block" as `Ok(None)` ([`retry_nonblocking`]).
//!
//! Pure Rust but for the conversions, which need the GIL.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::RawFd;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString, PyTuple};

use super::retry_nonblocking;

// The C library's address text conversions (POSIX; the `libc` crate does not bind them).
extern "C" {
    fn inet_pton(af: libc::c_int, src: *const libc::c_char, dst: *mut libc::c_void) -> libc::c_int;
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// A socket address as the kernel reads and writes it.
#[derive(Clone, Copy)]
pub struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// `sendto(fd, buf, addr)`; `addr` None: `send` on a connected socket.
pub fn send_to(fd: RawFd, buf: &[u8], addr: Option<&SockAddr>) -> io::Result<Option<usize>> {
    let (name, len) = match addr {
        Some(a) => (
            std::ptr::from_ref(&a.storage).cast::<libc::sockaddr>(),
            a.len,
        ),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `buf` is a valid slice for the call and only read; `name` is null with length
    // 0, or points to a sockaddr_storage of which the first `len` bytes are initialised.
    retry_nonblocking(|| unsafe {
        libc::sendto(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            name,
            len,
        )
    })
}

/// `recvfrom(fd, buf)`: the size of the datagram taken (truncated to `buf`) and its sender.
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<(usize, SockAddr)>> {
    let mut addr = SockAddr::empty();
    // SAFETY: `buf` is writable for its length; `addr.storage` is a sockaddr_storage of the
    // size passed in `addr.len`, which the kernel updates to the size it wrote.
    let n = retry_nonblocking(|| unsafe {
        addr.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        libc::recvfrom(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            std::ptr::from_mut(&mut addr.storage).cast(),
            &raw mut addr.len,
        )
    })?;
    Ok(n.map(|n| (n, addr)))
}

/// The most datagrams one `recv_batch` takes.
pub const RECV_BATCH: usize = 8;

/// `recvmmsg(fd)`: the datagrams waiting on `fd`, up to [`RECV_BATCH`] and as many as `buffer`
/// has `slot`-byte slots for, datagram i into slot i (truncated to it, as `recvfrom` of
/// `slot` bytes would). Writes each one's size and sender to `out[i]` and returns how many
/// there were; `Ok(None)` if none. An error after the first datagram is the kernel's to keep
/// for the next call, so no datagram taken is lost to it.
pub fn recv_batch(
    fd: RawFd,
    buffer: &mut [u8],
    slot: usize,
    out: &mut [(usize, SockAddr); RECV_BATCH],
) -> io::Result<Option<usize>> {
    // SAFETY: iovec and mmsghdr are plain C data; all zeroes (null pointers, zero lengths) is
    // valid, and every field the kernel reads is set below.
    let mut iovecs: [libc::iovec; RECV_BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; RECV_BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
    let mut count = 0;
    for ((chunk, iov), (header, (_, from))) in buffer
        .chunks_exact_mut(slot)
        .zip(iovecs.iter_mut())
        .zip(headers.iter_mut().zip(out.iter_mut()))
    {
        iov.iov_base = chunk.as_mut_ptr().cast();
        iov.iov_len = slot;
        header.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        header.msg_hdr.msg_iovlen = 1;
        header.msg_hdr.msg_name = std::ptr::from_mut(&mut from.storage).cast();
        header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        count += 1;
    }
    // SAFETY: the first `count` headers each point at their own writable slot of `buffer` and
    // at the storage of their own `out` entry, of the lengths given; the kernel fills at most
    // `count` of them and reports how many.
    let received = retry_nonblocking(|| unsafe {
        libc::recvmmsg(
            fd,
            headers.as_mut_ptr(),
            count as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        ) as isize
    })?;
    let Some(received) = received else {
        return Ok(None);
    };
    for (header, (size, from)) in headers.iter().zip(out.iter_mut()).take(received) {
        *size = header.msg_len as usize;
        from.len = header.msg_hdr.msg_namelen;
    }
    Ok(Some(received))
}

/// An IP literal of `family` (AF_INET/AF_INET6) in `host`, as `inet_pton` reads it; None if
/// it is not one (including names longer than any literal and names with a NUL).
fn parse_ip(family: i32, host: &str, out: *mut libc::c_void) -> bool {
    let mut text = [0u8; 64];
    if host.len() >= text.len() || host.as_bytes().contains(&0) {
        return false;
    }
    text[..host.len()].copy_from_slice(host.as_bytes());
    // SAFETY: `text` is NUL-terminated; `out` points to an in_addr/in6_addr as `family` asks
    // (the caller's field of its sockaddr).
    unsafe { inet_pton(family, text.as_ptr().cast(), out) == 1 }
}

fn exact_u32(obj: &Bound<'_, PyAny>) -> Option<u32> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<u32>().ok()
}

impl SockAddr {
    pub fn empty() -> SockAddr {
        SockAddr {
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (AF_UNSPEC) value.
            storage: unsafe { MaybeUninit::zeroed().assume_init() },
            len: 0,
        }
    }

    pub fn family(&self) -> i32 {
        i32::from(self.storage.ss_family)
    }

    /// The same address (family, bytes and length).
    pub fn same_as(&self, other: &SockAddr) -> bool {
        self.len == other.len && self.bytes() == other.bytes()
    }

    fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(size_of::<libc::sockaddr_storage>());
        // SAFETY: the storage is plain data of at least `len` bytes, all initialised (zeroed
        // at creation, then written by the kernel or by `from_python`).
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&self.storage).cast(), len) }
    }

    /// The address `socket.sendto(data, addr)` would send to on a socket of `family`, when it
    /// is an IP literal with an int port; None leaves the conversion to the socket module.
    pub fn from_python(addr: &Bound<'_, PyAny>, family: i32) -> Option<SockAddr> {
        let tuple = addr.cast_exact::<PyTuple>().ok()?;
        let n = tuple.len();
        let host = tuple.get_item(0).ok()?;
        let host = host.cast_exact::<PyString>().ok()?;
        let host = host.to_str().ok()?;
        let port = u16::try_from(exact_u32(&tuple.get_item(1).ok()?)?).ok()?;
        let mut out = SockAddr::empty();
        match family {
            libc::AF_INET if n == 2 => {
                // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
                let sin = unsafe {
                    &mut *std::ptr::from_mut(&mut out.storage).cast::<libc::sockaddr_in>()
                };
                if !parse_ip(family, host, std::ptr::from_mut(&mut sin.sin_addr).cast()) {
                    return None;
                }
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = port.to_be();
                out.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            libc::AF_INET6 if (2..=4).contains(&n) => {
                let flowinfo = match n {
                    2 => 0,
                    _ => exact_u32(&tuple.get_item(2).ok()?)?,
                };
                let scope_id = match n {
                    4 => exact_u32(&tuple.get_item(3).ok()?)?,
                    _ => 0,
                };
                if flowinfo > 0xfffff {
                    return None; // the socket module's OverflowError
                }
                // SAFETY: as above.
                let sin6 = unsafe {
                    &mut *std::ptr::from_mut(&mut out.storage).cast::<libc::sockaddr_in6>()
                };
                if !parse_ip(family, host, std::ptr::from_mut(&mut sin6.sin6_addr).cast()) {
                    return None;
                }
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = port.to_be();
                sin6.sin6_flowinfo = flowinfo.to_be();
                sin6.sin6_scope_id = scope_id;
                out.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            }
            _ => return None,
        }
        Some(out)
    }

    /// `makesockaddr`: what `socket.recvfrom` returns as the sender's address.
    pub fn to_python<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.len == 0 {
            return Ok(py.None().into_bound(py));
        }
        match self.family() {
            libc::AF_INET => {
                // SAFETY: the kernel wrote an AF_INET address, a sockaddr_in.
                let sin =
                    unsafe { &*std::ptr::from_ref(&self.storage).cast::<libc::sockaddr_in>() };
                // `inet_ntoa`'s dotted quad, without the C library's printf.
                let host = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string();
                Ok((host, u16::from_be(sin.sin_port))
                    .into_pyobject(py)?
                    .into_any())
            }
            libc::AF_INET6 => {
                // SAFETY: the kernel wrote an AF_INET6 address, a sockaddr_in6.
                let sin6 =
                    unsafe { &*std::ptr::from_ref(&self.storage).cast::<libc::sockaddr_in6>() };
                let host = ntop(libc::AF_INET6, std::ptr::from_ref(&sin6.sin6_addr).cast())?;
                Ok((
                    host,
                    u16::from_be(sin6.sin6_port),
                    u32::from_be(sin6.sin6_flowinfo),
                    sin6.sin6_scope_id,
                )
                    .into_pyobject(py)?
                    .into_any())
            }
            libc::AF_UNIX => {
                let path_offset = std::mem::offset_of!(libc::sockaddr_un, sun_path);
                let path = self.bytes().get(path_offset..).unwrap_or_default();
                if path.first() == Some(&0) {
                    // Linux's abstract namespace: the name is bytes, NULs and all.
                    return Ok(PyBytes::new(py, path).into_any());
                }
                let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
                // SAFETY: `path[..end]` is a valid byte range; the call copies it.
                unsafe {
                    Bound::from_owned_ptr_or_err(
                        py,
                        ffi::PyUnicode_DecodeFSDefaultAndSize(
                            path.as_ptr().cast(),
                            end as ffi::Py_ssize_t,
                        ),
                    )
                }
            }
            _ => Ok(py.None().into_bound(py)),
        }
    }
}

/// `inet_ntop` of the address at `src` (an in_addr or in6_addr as `family` says).
fn ntop(family: i32, src: *const libc::c_void) -> PyResult<String> {
    let mut text = [0 as libc::c_char; 64];
    // SAFETY: `src` points to an address of `family`; `text` is writable for its length.
    let rc = unsafe { inet_ntop(family, src, text.as_mut_ptr(), text.len() as _) };
    if rc.is_null() {
        return Err(crate::errors::os_error(io::Error::last_os_error()));
    }
    // SAFETY: on success inet_ntop wrote a NUL-terminated string into `text`.
    Ok(unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_socket() -> RawFd {
        // SAFETY: plain socket(2) call; the fd is closed by the test.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        assert!(fd >= 0);
        let mut addr = SockAddr::empty();
        // SAFETY: storage is big enough for a sockaddr_in.
        let sin =
            unsafe { &mut *std::ptr::from_mut(&mut addr.storage).cast::<libc::sockaddr_in>() };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from_be_bytes([127, 0, 0, 1]).to_be();
        addr.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: `addr` holds a valid sockaddr_in of `len` bytes.
        let rc = unsafe { libc::bind(fd, std::ptr::from_ref(&addr.storage).cast(), addr.len) };
        assert_eq!(rc, 0);
        fd
    }

    fn local_addr(fd: RawFd) -> SockAddr {
        let mut addr = SockAddr::empty();
        addr.len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `addr.storage` is writable for `addr.len` bytes.
        let rc = unsafe {
            libc::getsockname(
                fd,
                std::ptr::from_mut(&mut addr.storage).cast(),
                &raw mut addr.len,
            )
        };
        assert_eq!(rc, 0);
        addr
    }

    #[test]
    fn sends_and_receives_with_addresses_and_would_block_is_none() {
        let (a, b) = (udp_socket(), udp_socket());
        let (a_addr, b_addr) = (local_addr(a), local_addr(b));
        let mut buf = [0u8; 16];
        assert!(recv_from(b, &mut buf).unwrap().is_none());
        assert_eq!(send_to(a, b"hello", Some(&b_addr)).unwrap(), Some(5));
        let (n, from) = recv_from(b, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert!(from.same_as(&a_addr));
        assert!(!from.same_as(&b_addr));
        // SAFETY: closing the fds this test opened.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }
    #[test]
    fn recv_batch_takes_what_waits_in_order_truncated_to_the_slot() {
        let (a, b) = (udp_socket(), udp_socket());
        let (a_addr, b_addr) = (local_addr(a), local_addr(b));
        let mut buffer = vec![0u8; 4 * 8];
        let mut out = [(0, SockAddr::empty()); RECV_BATCH];
        assert!(recv_batch(b, &mut buffer, 8, &mut out).unwrap().is_none());
        for message in [&b"one"[..], b"two", b"a longer one", b"four", b"five"] {
            assert!(send_to(a, message, Some(&b_addr)).unwrap().is_some());
        }
        // Four slots: the fifth datagram waits for the next call.
        assert_eq!(recv_batch(b, &mut buffer, 8, &mut out).unwrap(), Some(4));
        let sizes: Vec<usize> = out[..4].iter().map(|(n, _)| *n).collect();
        assert_eq!(sizes, [3, 3, 8, 4]);
        assert_eq!(&buffer[..3], b"one");
        assert_eq!(&buffer[16..24], b"a longer");
        assert!(out[..4].iter().all(|(_, from)| from.same_as(&a_addr)));
        assert_eq!(recv_batch(b, &mut buffer, 8, &mut out).unwrap(), Some(1));
        assert_eq!(&buffer[..4], b"five");
        // SAFETY: closing the fds this test opened.
        unsafe {
            libc::close(a);
            libc::close(b);
        }
    }
}
