//! `udp_echo_server CPU ENDPOINTS`: the bench's native UDP echo server, the limit a datagram
//! echo server on an event loop is measured against. It pins itself to CPU, binds a UDP
//! socket on 127.0.0.1 (an ephemeral port, printed on stdout), sends every datagram back to
//! its sender, and exits once ENDPOINTS senders have said goodbye (`bye`), as the bench's
//! Python datagram servers do; or on its own after DEADLINE_SECONDS.
//!
//! The fewest system calls this echo can take: one thread, a level-triggered epoll set it
//! sleeps in when nothing is there, then `recvmmsg` of up to BATCH datagrams at once and one
//! `sendmmsg` of all their replies. No Python, no callbacks, no allocation per datagram: what
//! is left is the system calls and the kernel's loopback path.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;

use echo_client::{check, finish, new_epoll, numbers, pin_to, wait, wait_writable, watch};

const DEADLINE_SECONDS: u32 = 300;
const BATCH: usize = 16;
/// The largest UDP payload is 65,507 bytes (IPv4); a slot holds any datagram whole.
const SLOT_SIZE: usize = 64 * 1024;
const GOODBYE: &[u8] = b"bye";

/// BATCH receive slots, each with its sender's address; the same headers send the replies.
struct Batch {
    buffers: Vec<u8>,
    iovecs: [libc::iovec; BATCH],
    senders: [libc::sockaddr_storage; BATCH],
    headers: [libc::mmsghdr; BATCH],
}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: iovec, sockaddr_storage and mmsghdr are plain C data; all zeroes is valid
        // for each (null pointers, zero lengths), and `point` fills them in before any use.
        let mut batch = Box::new(Batch {
            buffers: vec![0u8; BATCH * SLOT_SIZE],
            iovecs: unsafe { zeroed() },
            senders: unsafe { zeroed() },
            headers: unsafe { zeroed() },
        });
        batch.point();
        batch
    }

    /// Aim every header at its slot and sender (the box keeps the addresses stable).
    fn point(&mut self) {
        for i in 0..BATCH {
            self.iovecs[i] = libc::iovec {
                iov_base: self.buffers[i * SLOT_SIZE..].as_mut_ptr().cast(),
                iov_len: SLOT_SIZE,
            };
            let header = &mut self.headers[i].msg_hdr;
            header.msg_name = std::ptr::from_mut(&mut self.senders[i]).cast();
            header.msg_iov = &raw mut self.iovecs[i];
            header.msg_iovlen = 1;
        }
    }

    /// Receive what is there, up to BATCH datagrams; returns how many.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        for i in 0..BATCH {
            self.iovecs[i].iov_len = SLOT_SIZE;
            self.headers[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at its own writable slot and sender storage, of the
        // lengths given; the kernel fills at most BATCH of them.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        match check(n) {
            Ok(n) => Ok(n as usize),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            Err(err) => Err(err),
        }
    }

    /// Turn the first `received` slots into replies, leaving out goodbyes; returns how many
    /// replies there are (at the front) and how many goodbyes there were.
    fn keep_replies(&mut self, received: usize) -> (usize, usize) {
        let mut replies = 0;
        let mut goodbyes = 0;
        for i in 0..received {
            let len = self.headers[i].msg_len as usize;
            if &self.buffers[i * SLOT_SIZE..i * SLOT_SIZE + len] == GOODBYE {
                goodbyes += 1;
                continue;
            }
            // The reply goes out of slot i to sender i, through header `replies` (<= i).
            self.iovecs[i].iov_len = len;
            let namelen = self.headers[i].msg_hdr.msg_namelen;
            let header = &mut self.headers[replies].msg_hdr;
            header.msg_iov = &raw mut self.iovecs[i];
            header.msg_name = std::ptr::from_mut(&mut self.senders[i]).cast();
            header.msg_namelen = namelen;
            replies += 1;
        }
        (replies, goodbyes)
    }

    /// Send the first `count` headers' replies, waiting when the send buffer is full.
    fn send(&mut self, fd: RawFd, count: usize) -> io::Result<()> {
        let mut sent = 0;
        while sent < count {
            // SAFETY: headers `sent..count` point at slots and senders that hold a reply.
            let n = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[sent..].as_mut_ptr(),
                    (count - sent) as libc::c_uint,
                    0,
                )
            };
            match check(n) {
                Ok(n) => sent += n as usize,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => wait_writable(fd)?,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.point();
        Ok(())
    }
}

fn serve(cpu: usize, endpoints: usize) -> io::Result<()> {
    pin_to(cpu)?;
    // SAFETY: alarm only arms the process's SIGALRM timer, whose default action ends it.
    unsafe { libc::alarm(DEADLINE_SECONDS) };
    let socket = UdpSocket::bind(("127.0.0.1", 0))?;
    socket.set_nonblocking(true)?;
    println!("{}", socket.local_addr()?.port());
    let fd = socket.as_raw_fd();
    let epoll_owner = new_epoll()?;
    let epoll = epoll_owner.as_raw_fd();
    watch(epoll, fd, 0)?;
    let mut batch = Batch::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }];
    let mut goodbyes = 0;
    while goodbyes < endpoints {
        if wait(epoll, &mut events, -1)? == 0 {
            continue;
        }
        let received = batch.receive(fd)?;
        let (replies, left) = batch.keep_replies(received);
        goodbyes += left;
        batch.send(fd, replies)?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let outcome =
        numbers("udp_echo_server CPU ENDPOINTS", 2).map(|v| serve(v[0], v[1]).map(|()| ""));
    finish("udp_echo_server", outcome)
}
