//! `udp_echo_client PORT MESSAGE_SIZE ENDPOINTS ROUND_TRIPS_PER_ENDPOINT WARM_UP`: the bench's
//! native UDP load client, the datagram counterpart of `echo_client`. It opens ENDPOINTS UDP
//! sockets connected to 127.0.0.1:PORT, warms each with WARM_UP round trips, then times
//! ROUND_TRIPS_PER_ENDPOINT round trips on every endpoint at once (one datagram in flight per
//! endpoint) and prints the seconds the timed part took. Afterwards each endpoint says goodbye
//! (`bye`), which is how the bench's datagram echo servers know to exit. Only lengths are
//! checked.
//!
//! Same shape as `echo_client`: one thread, one epoll set polled without blocking (the client
//! spins on its own core, so a reply is not measured with the time an idle core takes to
//! wake), replies read with `MSG_DONTWAIT`. Loopback does not drop datagrams at this rate; a
//! lost one shows as a client that never finishes, which the harness's timeout ends.

use std::io;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::Instant;

use echo_client::{client_args, finish, new_epoll, wait, watch, ClientArgs};

const GOODBYE: &[u8] = b"bye";

struct Endpoint {
    socket: UdpSocket,
    remaining: usize,
}

/// Run `count` round trips on every endpoint at once; returns once all are done.
fn round_trips(
    epoll: RawFd,
    endpoints: &mut [Endpoint],
    message: &[u8],
    count: usize,
) -> io::Result<()> {
    if count == 0 {
        return Ok(());
    }
    for endpoint in endpoints.iter_mut() {
        endpoint.remaining = count;
        endpoint.socket.send(message)?;
    }
    let mut busy = endpoints.len();
    // Larger than any datagram: a longer reply is seen as one, not truncated to fit.
    let mut buffer = vec![0u8; message.len() + 1];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; endpoints.len()];
    while busy > 0 {
        let ready = wait(epoll, &mut events, 0)?;
        for event in &events[..ready] {
            let endpoint = &mut endpoints[event.u64 as usize];
            if endpoint.remaining == 0 {
                continue;
            }
            // SAFETY: `buffer` is writable for its whole length.
            let n = unsafe {
                libc::recv(
                    endpoint.socket.as_raw_fd(),
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
            if n as usize != message.len() {
                return Err(io::Error::other(format!(
                    "the echo server sent {n} bytes for a datagram of {}",
                    message.len()
                )));
            }
            endpoint.remaining -= 1;
            if endpoint.remaining == 0 {
                busy -= 1;
            } else {
                endpoint.socket.send(message)?;
            }
        }
    }
    Ok(())
}

fn run(args: &ClientArgs) -> io::Result<f64> {
    let epoll_owner = new_epoll()?;
    let epoll = epoll_owner.as_raw_fd();
    let mut endpoints = Vec::with_capacity(args.peers);
    for index in 0..args.peers {
        let socket = UdpSocket::bind(("127.0.0.1", 0))?;
        socket.connect(("127.0.0.1", args.port))?;
        watch(epoll, socket.as_raw_fd(), index as u64)?;
        endpoints.push(Endpoint {
            socket,
            remaining: 0,
        });
    }
    let message = vec![b'x'; args.message_size];
    round_trips(epoll, &mut endpoints, &message, args.warm_up)?;
    let began = Instant::now();
    round_trips(epoll, &mut endpoints, &message, args.round_trips)?;
    let seconds = began.elapsed().as_secs_f64();
    for endpoint in &endpoints {
        // The timed part is over; a server that already left is not an error here.
        let _ = endpoint.socket.send(GOODBYE);
    }
    Ok(seconds)
}

fn main() -> ExitCode {
    let peers = "ENDPOINTS";
    finish(
        "udp_echo_client",
        client_args("udp_echo_client", peers).map(|args| run(&args)),
    )
}
