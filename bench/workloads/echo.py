"""Echo over loopback in three API styles, at three message sizes; server and client in
separate processes pinned to different cores, both on the candidate loop.

Styles:
- `sock`: `loop.sock_accept` / `sock_recv` / `sock_sendall` on raw non-blocking sockets.
- `streams`: `asyncio.start_server` / `open_connection`; the server does
  `reader.readexactly(size)` then `writer.write` + `drain`, the client the reverse.
- `protocol`: `loop.create_server` with a `Protocol` whose `data_received` writes the data
  straight back; the client is a `Protocol` too (`loop.create_connection`) that sends the
  next message as soon as the previous one is back in full.

The client (the worker process, pinned to CLIENT_CPU) starts the server
(`python -m bench.workloads.echo STYLE LOOP CONNECTIONS MESSAGE_SIZE`, pinned to SERVER_CPU),
which prints its port and exits once every connection has closed. The client opens
CONNECTIONS connections, warms each with a few round trips, then times `size`
request/response round trips spread over the connections, one message in flight per
connection. Only the reply's length is checked, not its bytes: this is a benchmark.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import cast

from ..loops import run_on, unsupported_reason
from ..pinning import pin_to
from . import Timing, Workload

SERVER_CPU = 0
CLIENT_CPU = 1
CONNECTIONS = 4
WARM_UP_ROUND_TRIPS = 100
RECV_SIZE = 256 * 1024
#: A server left behind by a client that died exits on its own after this long.
SERVER_DEADLINE_SECONDS = 300.0
#: What a server prints instead of its port when its loop raised NotImplementedError while
#: setting up (rloop 0.5's create_server with ssl=): the client raises it again.
UNSUPPORTED_PREFIX = "unsupported: "
#: How long closing the connections may take once the timed part is done. A loop that does
#: not close them (rloop 0.5's transports send no FIN on close()) costs this and a note, not
#: the measurement: the round trips were all complete by then.
CLOSE_GRACE_SECONDS = 2.0
STYLES = ("sock", "streams", "protocol")
#: Message size -> round trips per measurement in a full run, tuned for roughly 0.3-1 s on
#: the slowest loop (the standard one) on a 2-core machine.
ROUND_TRIPS = {1024: 60_000, 10 * 1024: 30_000, 100 * 1024: 8_000}
QUICK_DIVISOR = 10

#: (port, message, round trips per connection, notes) -> seconds the timed round trips took.
Client = Callable[[int, bytes, int, list[str]], Coroutine[object, object, float]]
#: (port, notes) -> seconds the timed round trips took: a client with its message bound.
BoundClient = Callable[[int, list[str]], Coroutine[object, object, float]]


def _nonblocking_nodelay(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def size_label(message_size: int) -> str:
    return f"{message_size // 1024}k"


# -- servers: each prints its port, serves `connections` connections, returns once all closed --


async def serve_sock(connections: int, message_size: int) -> None:
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(connections)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)

    async def echo(conn: socket.socket) -> None:
        with conn:
            while data := await loop.sock_recv(conn, RECV_SIZE):
                await loop.sock_sendall(conn, data)

    handlers = []
    with listener:
        for _ in range(connections):
            conn, _ = await loop.sock_accept(listener)
            handlers.append(loop.create_task(echo(_nonblocking_nodelay(conn))))
    await asyncio.gather(*handlers)


async def serve_streams(connections: int, message_size: int) -> None:
    loop = asyncio.get_running_loop()
    all_closed = loop.create_future()
    closed = 0

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        try:
            while True:
                try:
                    data = await reader.readexactly(message_size)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        raise
                    break  # clean end of the client's stream
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            closed += 1
            if closed == connections:
                all_closed.set_result(None)

    server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=connections)
    print(server.sockets[0].getsockname()[1], flush=True)
    await serve_until(server, all_closed)


class EchoServerProtocol(asyncio.Protocol):
    def __init__(self, on_lost: Callable[[], None]) -> None:
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's and rloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_lost()


async def serve_protocol(connections: int, message_size: int, ssl_context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    all_closed = loop.create_future()
    closed = 0

    def on_lost() -> None:
        nonlocal closed
        closed += 1
        if closed == connections:
            all_closed.set_result(None)

    server = await loop.create_server(
        lambda: EchoServerProtocol(on_lost), "127.0.0.1", 0, backlog=connections, ssl=ssl_context
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    await serve_until(server, all_closed)


async def serve_until(server: asyncio.AbstractServer, done: Awaitable[object]) -> None:
    """Keep `server` listening until `done`, then close it. Not `async with server`: rsloop's
    Server is no asynchronous context manager."""
    try:
        await done
    finally:
        server.close()
        await server.wait_closed()


SERVERS: dict[str, Callable[[int, int], Coroutine[object, object, None]]] = {
    "sock": serve_sock,
    "streams": serve_streams,
    "protocol": serve_protocol,
}


def run_server(style: str, loop_name: str, connections: int, message_size: int) -> None:
    run_pinned_server(loop_name, lambda: SERVERS[style](connections, message_size))


def run_pinned_server(loop_name: str, serve: Callable[[], Awaitable[None]]) -> None:
    """Run `serve()` on the named loop, pinned to SERVER_CPU, for SERVER_DEADLINE_SECONDS
    at most."""
    pin_to(SERVER_CPU)

    async def bounded() -> None:
        async with asyncio.timeout(SERVER_DEADLINE_SECONDS):
            await serve()

    try:
        run_on(loop_name, bounded)
    except NotImplementedError as error:
        print(UNSUPPORTED_PREFIX + unsupported_reason(error), flush=True)


# -- clients: each connects, warms up, and returns the seconds the timed round trips took -----


async def sock_round_trips(sock: socket.socket, message: bytes, count: int) -> None:
    loop = asyncio.get_running_loop()
    for _ in range(count):
        await loop.sock_sendall(sock, message)
        received = 0
        while received < len(message):
            chunk = await loop.sock_recv(sock, RECV_SIZE)
            if not chunk:
                raise ConnectionError("echo server closed the connection")
            received += len(chunk)


async def bounded_close(closing: Awaitable[object], what: str, notes: list[str]) -> None:
    try:
        await asyncio.wait_for(closing, CLOSE_GRACE_SECONDS)
    except TimeoutError:
        notes.append(f"{what} did not finish within {CLOSE_GRACE_SECONDS:.0f} s; left behind")


async def drive_sock(port: int, message: bytes, per_connection: int, notes: list[str]) -> float:
    loop = asyncio.get_running_loop()
    socks = [_nonblocking_nodelay(socket.socket()) for _ in range(CONNECTIONS)]
    try:
        for sock in socks:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        await asyncio.gather(*(sock_round_trips(s, message, WARM_UP_ROUND_TRIPS) for s in socks))
        start = time.perf_counter()
        await asyncio.gather(*(sock_round_trips(s, message, per_connection) for s in socks))
        return time.perf_counter() - start
    finally:
        for sock in socks:
            sock.close()


async def streams_round_trips(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes, count: int
) -> None:
    for _ in range(count):
        writer.write(message)
        await writer.drain()
        await reader.readexactly(len(message))


async def drive_streams(port: int, message: bytes, per_connection: int, notes: list[str]) -> float:
    pairs = [await asyncio.open_connection("127.0.0.1", port) for _ in range(CONNECTIONS)]
    try:
        warm_ups = (streams_round_trips(r, w, message, WARM_UP_ROUND_TRIPS) for r, w in pairs)
        await asyncio.gather(*warm_ups)
        start = time.perf_counter()
        await asyncio.gather(*(streams_round_trips(r, w, message, per_connection) for r, w in pairs))
        return time.perf_counter() - start
    finally:
        for _, writer in pairs:
            writer.close()
        closing = asyncio.gather(*(writer.wait_closed() for _, writer in pairs))
        await bounded_close(closing, "client writer.wait_closed()", notes)


class EchoClientProtocol(asyncio.Protocol):
    """Sends `message`, waits until as many bytes are back, sends again, `count` times."""

    def __init__(self, message: bytes) -> None:
        self.message = message
        self.transport: asyncio.Transport | None = None
        self.received = 0
        self.remaining = 0
        self.done: asyncio.Future[None] | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's and rloop's transports do not subclass asyncio's.
        self.transport = cast(asyncio.Transport, transport)

    def round_trips(self, count: int) -> asyncio.Future[None]:
        assert self.transport is not None
        self.remaining = count
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(self.message)
        return self.done

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.done is not None
        self.received += len(data)
        if self.received < len(self.message):
            return
        if self.received > len(self.message):
            self.done.set_exception(ConnectionError("echo server sent more than was sent"))
            self.transport.abort()
            return
        self.received = 0
        self.remaining -= 1
        if self.remaining:
            self.transport.write(self.message)
        else:
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError(f"echo connection lost: {exc!r}"))
        self.closed.set_result(None)


async def drive_protocol(
    port: int,
    message: bytes,
    per_connection: int,
    notes: list[str],
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
) -> float:
    loop = asyncio.get_running_loop()
    clients: list[EchoClientProtocol] = []
    try:
        for _ in range(CONNECTIONS):
            _, client = await loop.create_connection(
                lambda: EchoClientProtocol(message),
                "127.0.0.1",
                port,
                ssl=ssl_context,
                server_hostname=server_hostname,
            )
            clients.append(client)
        await asyncio.gather(*(c.round_trips(WARM_UP_ROUND_TRIPS) for c in clients))
        start = time.perf_counter()
        await asyncio.gather(*(c.round_trips(per_connection) for c in clients))
        return time.perf_counter() - start
    finally:
        for client in clients:
            if client.transport is not None:
                client.transport.close()
        closing = asyncio.gather(*(c.closed for c in clients))
        await bounded_close(closing, "client connection_lost after transport.close()", notes)


CLIENTS: dict[str, Client] = {
    "sock": drive_sock,
    "streams": drive_streams,
    "protocol": drive_protocol,
}


def measure(style: str, message_size: int, loop_name: str, size: int) -> Timing:
    per_connection = max(1, size // CONNECTIONS)
    message = b"x" * message_size
    server_arguments = [style, loop_name, str(CONNECTIONS), str(message_size)]
    client = CLIENTS[style]
    return measure_against_server(
        __name__,
        server_arguments,
        f"{style} echo server on {loop_name}",
        loop_name,
        lambda port, notes: client(port, message, per_connection, notes),
        per_connection * CONNECTIONS,
    )


def measure_against_server(
    server_module: str,
    server_arguments: list[str],
    server_description: str,
    loop_name: str,
    drive: BoundClient | None,
    round_trips: int,
    native_client: Callable[[int, list[str]], float] | None = None,
    server_command: list[str] | None = None,
) -> Timing:
    """Start `python -m server_module *server_arguments` (or `server_command`; either pins
    itself to SERVER_CPU and prints its port), pin this process to CLIENT_CPU, run `drive(port, notes)` on the named
    loop (or `native_client(port, notes)`, a client that is no loop at all), then reap the
    server. Returns `round_trips` over the seconds the client measured."""
    # Start the server before pinning: it inherits this process's affinity and pins itself.
    server = subprocess.Popen(
        server_command or [sys.executable, "-m", server_module, *server_arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    pin_to(CLIENT_CPU)
    try:
        assert server.stdout is not None
        port_line = server.stdout.readline()
        if port_line.startswith(UNSUPPORTED_PREFIX):
            reason = port_line.removeprefix(UNSUPPORTED_PREFIX).strip()
            raise NotImplementedError(f"server: {reason}")
        if not port_line.strip():
            raise RuntimeError(f"{server_description} did not start")
        notes: list[str] = []
        port = int(port_line)
        if native_client is not None:
            seconds = native_client(port, notes)
        else:
            assert drive is not None
            seconds = run_on(loop_name, lambda: drive(port, notes))
        try:
            if server.wait(timeout=CLOSE_GRACE_SECONDS) != 0:
                raise RuntimeError(f"{server_description} exited with {server.returncode}")
        except subprocess.TimeoutExpired:
            notes.append(
                f"server still running {CLOSE_GRACE_SECONDS:.0f} s after the client closed "
                "its connections (it never saw them close); killed"
            )
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return Timing(round_trips, seconds, tuple(notes))


def make_workload(style: str, message_size: int) -> Workload:
    return echo_workload(
        f"{style}_echo_{size_label(message_size)}",
        message_size,
        ROUND_TRIPS[message_size],
        lambda loop_name, size: measure(style, message_size, loop_name, size),
    )


def echo_workload(name: str, message_size: int, round_trips: int, measure: Callable[[str, int], Timing]) -> Workload:
    """An echo at `message_size` timing `round_trips` round trips in a full run; the client
    warms its own connections and pins its own processes."""
    return Workload(
        name=name,
        unit="requests",
        size=round_trips,
        quick_size=round_trips // QUICK_DIVISOR,
        measure=measure,
        warm_up=False,
        pins_own_cpus=True,
        bytes_per_op=message_size,
    )


WORKLOADS = [make_workload(style, size) for style in STYLES for size in ROUND_TRIPS]

if __name__ == "__main__":
    run_server(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
