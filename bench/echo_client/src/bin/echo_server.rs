//! `echo_server CPU CONNECTIONS`: the bench's native echo server, the limit an echo server on
//! an event loop is measured against. It pins itself to CPU, listens on 127.0.0.1 (an
//! ephemeral port, printed on stdout), accepts CONNECTIONS connections and echoes what each
//! sends until all of them have closed, then exits. It exits on its own after
//! DEADLINE_SECONDS, as the bench's Python servers do.
//!
//! It does what a minimal event loop does for a Protocol echo and nothing more: one thread, one
//! level-triggered epoll set that it sleeps in when nothing is ready (as every candidate loop
//! does), `recv` of whatever is there into one buffer, `send` of it straight back (waiting for
//! the socket to become writable only when the kernel's buffer is full). No Python, no
//! callbacks, no allocation per message: what is left is the system calls and the kernel's
//! loopback path, which bound what any loop on this machine can reach.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;

use echo_client::{finish, new_epoll, numbers, pin_to, wait, wait_writable, watch};

const DEADLINE_SECONDS: u32 = 300;
const RECV_SIZE: usize = 256 * 1024;
const LISTENER_TOKEN: u64 = u64::MAX;

/// Send all of `data`, sleeping in poll() for writability when the socket's buffer is full.
fn send_all(fd: RawFd, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        // SAFETY: `data` is readable for its whole length.
        let sent = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            data = &data[sent as usize..];
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => wait_writable(fd)?,
            _ => return Err(err),
        }
    }
    Ok(())
}

fn serve(cpu: usize, connections: usize) -> io::Result<()> {
    pin_to(cpu)?;
    // SAFETY: alarm only arms the process's SIGALRM timer, whose default action ends it.
    unsafe { libc::alarm(DEADLINE_SECONDS) };
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    listener.set_nonblocking(true)?;
    println!("{}", listener.local_addr()?.port());
    let epoll_owner = new_epoll()?;
    let epoll = epoll_owner.as_raw_fd();
    watch(epoll, listener.as_raw_fd(), LISTENER_TOKEN)?;
    let mut streams: Vec<Option<TcpStream>> = Vec::with_capacity(connections);
    let mut open = 0usize;
    let mut buffer = vec![0u8; RECV_SIZE];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; connections + 1];
    while streams.len() < connections || open > 0 {
        let ready = wait(epoll, &mut events, -1)?;
        for event in &events[..ready] {
            let token = event.u64;
            if token == LISTENER_TOKEN {
                while streams.len() < connections {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(true)?;
                            stream.set_nodelay(true)?;
                            watch(epoll, stream.as_raw_fd(), streams.len() as u64)?;
                            streams.push(Some(stream));
                            open += 1;
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) => return Err(err),
                    }
                }
                continue;
            }
            let slot = &mut streams[token as usize];
            let Some(stream) = slot.as_ref() else {
                continue;
            };
            let fd = stream.as_raw_fd();
            // SAFETY: `buffer` is writable for its whole length.
            let n = unsafe { libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::ConnectionReset => {}
                    _ => return Err(err),
                }
            }
            if n <= 0 {
                *slot = None; // closing the stream removes it from the epoll set
                open -= 1;
                continue;
            }
            send_all(fd, &buffer[..n as usize])?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let outcome = numbers("echo_server CPU CONNECTIONS", 2).map(|v| serve(v[0], v[1]).map(|()| ""));
    finish("echo_server", outcome)
}
