"""Scenarios run under the fault shim (tests/fault_shim.c), one per child interpreter.

`python syscall_faults.py SCENARIO LOOP` runs SCENARIO on LOOP ("asyncio" or "ferroloop") with
the shim preloaded and prints what was observable as one JSON object: the protocol's callbacks
(consecutive data_received calls folded into one entry, since chunking is timing), a digest of
the bytes delivered, what reached the exception handler, what the calls raised, and the shim's
count of faults it injected. tests/test_syscall_faults.py compares the two loops and asserts
what each scenario must show.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import hashlib
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import ferroloop

SHIM = ctypes.CDLL(None)
SHIM.fault_arm.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_long]
SHIM.fault_hits.argtypes = [ctypes.c_char_p]
SHIM.fault_hits.restype = ctypes.c_long

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, every byte's position recognisable
ALWAYS = -1


def arm(name: str, fd: int, err: int = 0, *, skip: int = 0, count: int = ALWAYS, limit: int = 0) -> None:
    """Fail (errno `err`) or cut to `limit` bytes the calls of `name` on `fd`, from call `skip`
    on, `count` of them."""
    assert SHIM.fault_arm(name.encode(), fd, err, skip, count, limit) >= 0, "no free rule"


def hits(*names: str) -> int:
    return sum(SHIM.fault_hits(name.encode()) for name in names)


def describe(exc: BaseException | None) -> Any:
    if exc is None:
        return None
    return [type(exc).__name__, getattr(exc, "errno", None)]


class Recorder(asyncio.Protocol):
    """Every callback, in order, with data folded into one entry per run of reads."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.received = hashlib.sha256()
        self.size = 0
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.calls or self.calls[-1] != "data_received":
            self.calls.append("data_received")
        self.received.update(data)
        self.size += len(data)

    def eof_received(self) -> None:
        self.calls.append("eof_received")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append(["connection_lost", describe(exc)])
        if not self.lost.done():
            self.lost.set_result(None)


Observed = dict[str, Any]


async def stream_pair() -> tuple[asyncio.Transport, Recorder, socket.socket]:
    """A stream transport on one end of a socketpair; the other end is the raw peer."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_accepted_socket(Recorder, ours)
    await asyncio.sleep(0)
    return transport, protocol, peer


async def drain_peer(peer: socket.socket, size: int) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    got = 0
    while got < size:
        chunk = await loop.sock_recv(peer, 1 << 16)
        if not chunk:
            break
        digest.update(chunk)
        got += len(chunk)
    return digest.hexdigest(), got


def fd_of(transport: asyncio.BaseTransport) -> int:
    return int(transport.get_extra_info("socket").fileno())


async def read_storm(observed: Observed) -> None:
    """recv interrupted 40 times, then 40 times "nothing yet", then a 1000-byte trickle:
    every byte arrives once, in order."""
    transport, protocol, peer = await stream_pair()
    fd = fd_of(transport)
    arm("recv", fd, errno.EINTR, count=40)
    arm("recv", fd, errno.EAGAIN, skip=40, count=40)
    arm("recv", fd, 0, skip=80, limit=1000)
    peer.setblocking(True)
    await asyncio.get_running_loop().run_in_executor(None, peer.sendall, PAYLOAD)
    peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(protocol.lost, 10)
    observed.update(
        sent=hashlib.sha256(PAYLOAD).hexdigest(),
        sent_size=len(PAYLOAD),
        received=protocol.received.hexdigest(),
        received_size=protocol.size,
        calls=protocol.calls,
        injected=hits("recv") >= 80,
    )
    peer.close()


class BufferedRecorder(Recorder, asyncio.BufferedProtocol):
    """A Recorder reading through get_buffer/buffer_updated into a 4000-byte buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = bytearray(4000)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.buffer[:nbytes]))


async def buffered_read_storm(observed: Observed) -> None:
    """read_storm for a BufferedProtocol: recv goes into the protocol's buffer."""
    ours, peer = socket.socketpair()
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(BufferedRecorder, ours)
    fd = fd_of(transport)
    arm("recv", fd, errno.EINTR, count=40)
    arm("recv", fd, errno.EAGAIN, skip=40, count=40)
    arm("recv", fd, 0, skip=80, limit=999)
    await asyncio.get_running_loop().run_in_executor(None, peer.sendall, PAYLOAD)
    peer.shutdown(socket.SHUT_WR)
    await asyncio.wait_for(protocol.lost, 10)
    observed.update(
        sent=hashlib.sha256(PAYLOAD).hexdigest(),
        received=protocol.received.hexdigest(),
        calls=protocol.calls,
        injected=hits("recv") >= 80,
    )
    peer.close()


async def tls_storm(observed: Observed) -> None:
    """TLS over sockets whose every recv and send (any fd) goes through EINTR, an EAGAIN storm,
    then 700-byte cuts that split records: the handshake completes and a 256 KiB echo comes
    back byte-exact."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import tls_helpers  # noqa: PLC0415 - trustme is only needed by this scenario

    pki = tls_helpers.make_pki()
    payload = PAYLOAD[: 1 << 18]

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1 << 16):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=pki.server_context())
    for name in ("recv", "send", "sendmsg"):
        arm(name, -1, errno.EINTR, count=20)
        arm(name, -1, errno.EAGAIN, skip=20, count=50)
        arm(name, -1, 0, skip=70, limit=700)
    reader, writer = await asyncio.open_connection(
        *server.sockets[0].getsockname()[:2],
        ssl=pki.client_context(),
        server_hostname=tls_helpers.HOSTNAME,
    )
    for i in range(0, len(payload), 1 << 14):
        writer.write(payload[i : i + (1 << 14)])
    echoed = await asyncio.wait_for(reader.readexactly(len(payload)), 30)
    writer.close()
    await writer.wait_closed()
    server.close()
    await server.wait_closed()
    observed.update(
        sent=hashlib.sha256(payload).hexdigest(),
        received=hashlib.sha256(echoed).hexdigest(),
        injected=hits("recv") >= 70 and hits("send", "sendmsg") >= 70,
    )


def write_eof_refused(*, buffered: bool) -> Callable[[Observed], Awaitable[None]]:
    """shutdown(SHUT_WR) fails (ENOTCONN): from write_eof() itself, or from the write watcher
    once the buffer has drained."""

    async def scenario(observed: Observed) -> None:
        transport, protocol, peer = await stream_pair()
        fd = fd_of(transport)
        arm("shutdown", fd, errno.ENOTCONN, count=1)
        if buffered:
            arm("send", fd, 0, count=1, limit=100)
            transport.write(PAYLOAD[:5000])
        try:
            transport.write_eof()
            observed["write_eof"] = "returned"
        except OSError as exc:
            observed["write_eof"] = describe(exc)
        digest, size = await asyncio.wait_for(drain_peer(peer, 5000 if buffered else 0), 5)
        await asyncio.sleep(0.05)
        observed.update(peer_size=size, closing=transport.is_closing(), injected=hits("shutdown"))
        transport.abort()
        await asyncio.wait_for(protocol.lost, 5)
        observed["calls"] = protocol.calls
        peer.close()

    return scenario


async def write_storm(observed: Observed) -> None:
    """send/sendmsg interrupted, refused with EAGAIN 200 times, then cut to 1000 bytes per
    call, across 64 writes and a writelines: the peer gets every byte once, in order."""
    transport, protocol, peer = await stream_pair()
    fd = fd_of(transport)
    for name in ("send", "sendmsg"):
        arm(name, fd, errno.EINTR, count=20)
        arm(name, fd, errno.EAGAIN, skip=20, count=200)
        arm(name, fd, 0, skip=220, limit=1000)
    transport.set_write_buffer_limits(high=1 << 30)  # no pause: the storm is what is tested
    pieces = [PAYLOAD[i : i + len(PAYLOAD) // 64] for i in range(0, len(PAYLOAD), len(PAYLOAD) // 64)]
    for piece in pieces[:32]:
        transport.write(piece)
    transport.writelines(pieces[32:])
    transport.write_eof()
    digest, size = await asyncio.wait_for(drain_peer(peer, len(PAYLOAD) + 1), 30)
    transport.close()
    await asyncio.wait_for(protocol.lost, 10)
    observed.update(
        sent=hashlib.sha256(PAYLOAD).hexdigest(),
        received=digest,
        received_size=size,
        calls=protocol.calls,
        injected=hits("send", "sendmsg") >= 220,
    )
    peer.close()


def write_error(err: int, *, buffered: bool) -> Callable[[Observed], Awaitable[None]]:
    """A send fails with `err`: in write() itself, or later, from the write watcher, with data
    buffered. connection_lost gets the error's exception once; later writes are tolerated."""

    async def scenario(observed: Observed) -> None:
        transport, protocol, peer = await stream_pair()
        fd = fd_of(transport)
        if buffered:
            # write() sends once (send, one buffer) and takes 100 bytes; the next send from
            # the buffer fails, whether it is a send (3.11, ferroloop) or a sendmsg (3.12+).
            arm("send", fd, 0, count=1, limit=100)
            arm("send", fd, err, skip=1, count=1)
            arm("sendmsg", fd, err, count=1)
        else:
            for name in ("send", "sendmsg"):
                arm(name, fd, err, count=1)
        transport.write(PAYLOAD[:5000])
        await asyncio.wait_for(protocol.lost, 10)
        for _ in range(3):
            transport.write(b"after the end")
        await asyncio.sleep(0.05)
        observed.update(
            calls=protocol.calls,
            injected=hits("send", "sendmsg"),
            closing=transport.is_closing(),
            buffer=transport.get_write_buffer_size(),
        )
        peer.close()

    return scenario


def read_error(err: int) -> Callable[[Observed], Awaitable[None]]:
    """recv fails with `err` once data is waiting: connection_lost gets it, no eof_received."""

    async def scenario(observed: Observed) -> None:
        transport, protocol, peer = await stream_pair()
        arm("recv", fd_of(transport), err, count=1)
        peer.send(b"waiting")
        await asyncio.wait_for(protocol.lost, 10)
        await asyncio.sleep(0.05)
        observed.update(calls=protocol.calls, injected=hits("recv"), closing=transport.is_closing())
        peer.close()

    return scenario


def accept_error(err: int) -> Callable[[Observed], Awaitable[None]]:
    """accept fails with `err` twice while a client waits: the server reports what the
    standard loop reports (or nothing, for ECONNABORTED), keeps its listening socket, and
    serves the client and a later one."""

    async def scenario(observed: Observed) -> None:
        loop = asyncio.get_running_loop()
        served: list[bytes] = []

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            served.append(line)
            writer.write(line)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        listener = server.sockets[0]
        for name in ("accept4", "accept"):
            arm(name, listener.fileno(), err, count=2)
        replies = []
        for n in range(2):
            reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            writer.write(b"client %d\n" % n)
            replies.append((await asyncio.wait_for(reader.readline(), 10)).decode())
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        observed.update(
            replies=replies, served=len(served), injected=hits("accept4", "accept"), loop_running=loop.is_running()
        )

    return scenario


async def socket_emfile(observed: Observed) -> None:
    """socket() fails with EMFILE: create_connection raises it; the next one connects."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    address = server.sockets[0].getsockname()[:2]
    loop = asyncio.get_running_loop()
    arm("socket", -1, errno.EMFILE, count=1)
    try:
        await loop.create_connection(asyncio.Protocol, *address)
    except OSError as exc:
        observed["first"] = describe(exc)
    transport, _ = await loop.create_connection(asyncio.Protocol, *address)
    observed["second"] = "connected"
    transport.close()
    server.close()
    await server.wait_closed()
    observed["injected"] = hits("socket")


def add_reader_refused(err: int) -> Callable[[Observed], Awaitable[None]]:
    """epoll_ctl refuses to watch an fd: add_reader raises the error and leaves nothing
    registered; asked again, it watches and the callback runs."""

    async def scenario(observed: Observed) -> None:
        loop = asyncio.get_running_loop()
        r, w = socket.socketpair()
        w.send(b"x")
        ran = loop.create_future()
        arm("epoll_ctl", r.fileno(), err, count=1)
        try:
            loop.add_reader(r.fileno(), ran.set_result, "first")
            observed["first"] = "watched"
        except OSError as exc:
            observed["first"] = describe(exc)
        observed["removed"] = loop.remove_reader(r.fileno())

        def second() -> None:
            if not ran.done():
                ran.set_result("second")

        loop.add_reader(r.fileno(), second)
        observed["ran"] = await asyncio.wait_for(ran, 5)
        loop.remove_reader(r.fileno())
        r.close()
        w.close()
        observed["injected"] = hits("epoll_ctl")

    return scenario


async def reader_watch_refused(observed: Observed) -> None:
    """epoll_ctl refuses the read watcher a new transport installs: the error reaches the
    exception handler (it is raised in a callback), the transport does not read, and the
    loop and the transport's writes carry on."""
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    arm("epoll_ctl", ours.fileno(), errno.ENOMEM, count=1)
    transport, protocol = await asyncio.get_running_loop().connect_accepted_socket(Recorder, ours)
    peer.send(b"unread")
    await asyncio.sleep(0.05)
    transport.write(b"still writes")
    digest, size = await asyncio.wait_for(drain_peer(peer, 12), 5)
    transport.close()
    await asyncio.wait_for(protocol.lost, 5)
    observed.update(peer_size=size, calls=protocol.calls, injected=hits("epoll_ctl"))
    peer.close()


def write_past_a_refused_watcher(transport: asyncio.WriteTransport, observed: Observed) -> None:
    """Write 5000 bytes (the first send takes 100, epoll refuses the watcher), then b"!"."""
    try:
        transport.write(PAYLOAD[:5000])
        observed["write"] = "accepted"
    except OSError as exc:
        observed["write"] = describe(exc)
    observed["buffered"] = transport.get_write_buffer_size()
    transport.write(b"!")


async def writer_watch_refused(observed: Observed) -> None:
    """A write the socket takes only partly needs the write watcher, and epoll_ctl refuses
    it: write() raises the error and keeps none of the data (the standard transport's order:
    watcher, then buffer), so the transport is not left holding bytes no watcher will send.
    The next write goes straight out."""
    transport, protocol, peer = await stream_pair()
    fd = fd_of(transport)
    arm("send", fd, 0, count=1, limit=100)
    arm("epoll_ctl", fd, errno.ENOMEM, count=1)
    write_past_a_refused_watcher(transport, observed)
    digest, size = await asyncio.wait_for(drain_peer(peer, 101), 5)
    observed["peer"] = [digest == hashlib.sha256(PAYLOAD[:100] + b"!").hexdigest(), size]
    transport.abort()
    await asyncio.wait_for(protocol.lost, 5)
    observed["calls"] = protocol.calls
    observed["injected"] = hits("epoll_ctl")
    peer.close()


async def pipe_writer_watch_refused(observed: Observed) -> None:
    """The pipe transport's write, when epoll refuses the write watcher: as for sockets."""
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    proto = Recorder()
    wt, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(wfd, "wb", 0))
    for name in ("write", "writev"):
        arm(name, wfd, 0, count=1, limit=100)
    arm("epoll_ctl", wfd, errno.ENOMEM, count=1)
    write_past_a_refused_watcher(wt, observed)
    observed["peer"] = os.read(rfd, 1000) == PAYLOAD[:100] + b"!"
    wt.abort()
    await asyncio.wait_for(proto.lost, 5)
    observed.update(calls=proto.calls, injected=hits("epoll_ctl"))
    os.close(rfd)


async def sock_ops_storm(observed: Observed) -> None:
    """sock_recv and sock_sendall through EINTR, EAGAIN storms and 1000-byte cuts: the bytes
    sent with sock_sendall come out of sock_recv once, in order."""
    loop = asyncio.get_running_loop()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    arm("recv", b.fileno(), errno.EINTR, count=30)
    arm("recv", b.fileno(), errno.EAGAIN, skip=30, count=30)
    arm("recv", b.fileno(), 0, skip=60, limit=1000)
    arm("send", a.fileno(), errno.EAGAIN, count=50)
    arm("send", a.fileno(), 0, skip=50, limit=1000)
    sending = loop.create_task(loop.sock_sendall(a, PAYLOAD))
    digest, size = await asyncio.wait_for(drain_peer(b, len(PAYLOAD)), 30)
    await sending
    observed.update(
        sent=hashlib.sha256(PAYLOAD).hexdigest(),
        received=digest,
        received_size=size,
        injected=hits("recv") >= 60 and hits("send") >= 50,
    )
    a.close()
    b.close()


async def wait_interrupted(observed: Observed) -> None:
    """epoll_wait interrupted 200 times while timers and a socket are pending: every timer
    fires once, in order, and the bytes arrive."""
    loop = asyncio.get_running_loop()
    arm("epoll_wait", -1, errno.EINTR, count=200)
    fired: list[int] = []
    for n in range(20):
        loop.call_later(0.001 * (20 - n), fired.append, 20 - n)
    r, w = socket.socketpair()
    r.setblocking(False)
    loop.call_later(0.005, w.send, b"through")
    data = await asyncio.wait_for(loop.sock_recv(r, 100), 5)
    await asyncio.sleep(0.05)
    observed.update(fired=fired, data=data.decode(), injected=hits("epoll_wait") == 200)
    r.close()
    w.close()


async def wait_fails(observed: Observed) -> None:
    """epoll_wait fails with ENOMEM once: the error leaves run_until_complete, as select's
    does from the standard loop's selector; a timer due meanwhile still fires once after."""
    loop = asyncio.get_running_loop()
    fired: list[int] = []
    observed["fired"] = fired
    loop.call_later(0.001, fired.append, 1)
    arm("epoll_wait", -1, errno.ENOMEM, count=1)
    await asyncio.sleep(0.05)  # the failing wait is here: the scenario does not get past it


async def pipe_storm(observed: Observed) -> None:
    """A pipe pair whose read() and write/writev see EINTR, EAGAIN storms and 1000-byte cuts:
    byte-exact delivery, then EOF."""
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    reader_proto = Recorder()
    writer_proto = Recorder()
    rt, _ = await loop.connect_read_pipe(lambda: reader_proto, os.fdopen(rfd, "rb", 0))
    wt, _ = await loop.connect_write_pipe(lambda: writer_proto, os.fdopen(wfd, "wb", 0))
    arm("read", rfd, errno.EINTR, count=30)
    arm("read", rfd, errno.EAGAIN, skip=30, count=30)
    arm("read", rfd, 0, skip=60, limit=1000)
    for name in ("write", "writev"):
        arm(name, wfd, errno.EINTR, count=20)
        arm(name, wfd, errno.EAGAIN, skip=20, count=100)
        arm(name, wfd, 0, skip=120, limit=1000)
    wt.set_write_buffer_limits(high=1 << 30)
    for i in range(0, len(PAYLOAD), 1 << 14):
        wt.write(PAYLOAD[i : i + (1 << 14)])
    wt.close()
    await asyncio.wait_for(reader_proto.lost, 30)
    await asyncio.wait_for(writer_proto.lost, 5)
    observed.update(
        sent=hashlib.sha256(PAYLOAD).hexdigest(),
        received=reader_proto.received.hexdigest(),
        received_size=reader_proto.size,
        reader_calls=reader_proto.calls,
        writer_calls=writer_proto.calls,
        injected=hits("read") >= 60 and hits("write", "writev") >= 120,
    )


async def pipe_write_error(observed: Observed) -> None:
    """The write end's write fails with EPIPE (the reader went away): connection_lost once."""
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    proto = Recorder()
    wt, _ = await loop.connect_write_pipe(lambda: proto, os.fdopen(wfd, "wb", 0))
    for name in ("write", "writev"):
        arm(name, wfd, errno.EPIPE, count=1)
    wt.write(b"lost")
    await asyncio.wait_for(proto.lost, 5)
    for _ in range(3):
        wt.write(b"after the end")
    await asyncio.sleep(0.05)
    observed.update(calls=proto.calls, injected=hits("write", "writev"))
    os.close(rfd)


SCENARIOS: dict[str, Callable[[Observed], Awaitable[None]]] = {
    "read_storm": read_storm,
    "write_storm": write_storm,
    "buffered_read_storm": buffered_read_storm,
    "tls_storm": tls_storm,
    "write_eof_shutdown_fails": write_eof_refused(buffered=False),
    "write_eof_shutdown_fails_buffered": write_eof_refused(buffered=True),
    "send_econnreset": write_error(errno.ECONNRESET, buffered=False),
    "send_econnreset_buffered": write_error(errno.ECONNRESET, buffered=True),
    "send_epipe": write_error(errno.EPIPE, buffered=False),
    "send_epipe_buffered": write_error(errno.EPIPE, buffered=True),
    "send_enobufs": write_error(errno.ENOBUFS, buffered=False),
    "send_enobufs_buffered": write_error(errno.ENOBUFS, buffered=True),
    "recv_econnreset": read_error(errno.ECONNRESET),
    "recv_etimedout": read_error(errno.ETIMEDOUT),
    "accept_emfile": accept_error(errno.EMFILE),
    "accept_enfile": accept_error(errno.ENFILE),
    "accept_enobufs": accept_error(errno.ENOBUFS),
    "accept_econnaborted": accept_error(errno.ECONNABORTED),
    "socket_emfile": socket_emfile,
    "add_reader_enomem": add_reader_refused(errno.ENOMEM),
    "add_reader_enospc": add_reader_refused(errno.ENOSPC),
    "reader_watch_refused": reader_watch_refused,
    "writer_watch_refused": writer_watch_refused,
    "pipe_writer_watch_refused": pipe_writer_watch_refused,
    "sock_ops_storm": sock_ops_storm,
    "wait_interrupted": wait_interrupted,
    "wait_fails": wait_fails,
    "pipe_storm": pipe_storm,
    "pipe_write_epipe": pipe_write_error,
}


def main() -> None:
    scenario_name, loop_name = sys.argv[1], sys.argv[2]
    loop = ferroloop.new_event_loop() if loop_name == "ferroloop" else asyncio.new_event_loop()
    handled: list[Any] = []

    def record(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message"))
        if message.startswith("Exception in callback"):
            # The callback's repr differs by design: asyncio names a handle cancelled while it
            # ran "None()", ferroloop the transport method.
            message = "Exception in callback ..."
        handled.append([message, describe(context.get("exception"))])

    loop.set_exception_handler(record)
    observed: Observed = {"loop": type(loop).__module__}
    try:
        loop.run_until_complete(asyncio.wait_for(SCENARIOS[scenario_name](observed), 40))
        observed["raised"] = None
    except BaseException as exc:  # noqa: BLE001 - the outcome is what the test compares
        observed["raised"] = describe(exc)
    try:
        SHIM.fault_clear()
        # Whatever happened, the loop runs again.
        observed["runs_after"] = loop.run_until_complete(asyncio.sleep(0.01, "runs"))
    finally:
        loop.close()
    observed["handled"] = handled
    print(json.dumps(observed))


if __name__ == "__main__":
    main()
