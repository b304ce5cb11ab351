//! `echo_client PORT MESSAGE_SIZE CONNECTIONS ROUND_TRIPS_PER_CONNECTION WARM_UP`: the bench's
//! native load client. It opens CONNECTIONS connections to 127.0.0.1:PORT, warms each with
//! WARM_UP round trips, then times ROUND_TRIPS_PER_CONNECTION request/response round trips on
//! every connection at once (one message in flight per connection, TCP_NODELAY), and prints
//! the seconds the timed part took. Only lengths are checked.
//!
//! It exists so that an echo benchmark can measure the server's loop alone: with a client on
//! the candidate loop too, each number is the sum of two loops' costs. One thread and one
//! epoll set for all connections, polled without blocking (the client spins on its own core:
//! a core that goes idle between replies takes tens of microseconds to wake in a virtual
//! machine, which would be measured as the server's latency), so the client's core does no
//! thread switching per reply;
//! replies are read with `MSG_DONTWAIT`, requests written with blocking writes (the server
//! reads all of every request before it replies, so a write never waits for long).

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::Instant;

use echo_client::{client_args, finish, new_epoll, wait, watch, ClientArgs};

struct Connection {
    stream: TcpStream,
    received: usize,
    remaining: usize,
}

/// Run `count` round trips on every connection at once; returns once all are done.
fn round_trips(
    epoll: RawFd,
    connections: &mut [Connection],
    message: &[u8],
    count: usize,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    for connection in connections.iter_mut() {
        connection.received = 0;
        connection.remaining = count;
        connection.stream.write_all(message)?;
    }
    let mut busy = connections.len();
    let mut buffer = vec![0u8; message.len().max(65536)];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; connections.len()];
    while busy > 0 {
        let ready = wait(epoll, &mut events, 0)?;
        for event in &events[..ready] {
            let connection = &mut connections[event.u64 as usize];
            if connection.remaining == 0 {
                continue;
            }
            // SAFETY: `buffer` is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    connection.stream.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => continue,
                    _ => return Err(err),
                }
            }
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the echo server closed a connection",
                ));
            }
            connection.received += n as usize;
            if connection.received > message.len() {
                return Err(io::Error::other("the echo server sent more than was sent"));
            }
            if connection.received == message.len() {
                connection.received = 0;
                connection.remaining -= 1;
                if connection.remaining == 0 {
                    busy -= 1;
                } else {
                    connection.stream.write_all(message)?;
                }
            }
        }
    }
    Ok(())
}

fn run(args: &ClientArgs) -> io::Result<f64> {
    let epoll_owner = new_epoll()?;
    let epoll = epoll_owner.as_raw_fd();
    let mut connections = Vec::with_capacity(args.peers);
    for index in 0..args.peers {
        let stream = TcpStream::connect(("127.0.0.1", args.port))?;
        stream.set_nodelay(true)?;
        watch(epoll, stream.as_raw_fd(), index as u64)?;
        connections.push(Connection {
            stream,
            received: 0,
            remaining: 0,
        });
    }
    let message = vec![b'x'; args.message_size];
    round_trips(epoll, &mut connections, &message, args.warm_up)?;
    let began = Instant::now();
    round_trips(epoll, &mut connections, &message, args.round_trips)?;
    let seconds = began.elapsed().as_secs_f64();
    for connection in &connections {
        // The timed part is over; a server that already closed is not an error here.
        let _ = connection.stream.shutdown(Shutdown::Both);
    }
    Ok(seconds)
}

fn main() -> ExitCode {
    let peers = "CONNECTIONS";
    finish(
        "echo_client",
        client_args("echo_client", peers).map(|args| run(&args)),
    )
}
