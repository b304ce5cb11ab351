"""Faults on loopback, each bounded in time and size and each asserting what it checks:

- the peer resets the connection in the middle of a large write;
- writes to a closing, closed or lost transport (the standard library's tolerance and warning);
- the process runs out of file descriptors while accepting (in a subprocess);
- a reader that never reads and a writer that ignores pause_writing (in a subprocess, for a
  clean memory measurement).

Where the standard library defines the behaviour, the same scenario runs on asyncio's loop and
on ferroloop and the two outcomes are compared."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import socket
import struct
import textwrap
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ferro_helpers import on_both_loops, run_python

pytestmark = pytest.mark.timeout(60)

BIG = bytes(range(256)) * (1 << 17)  # 32 MiB: far more than loopback's socket buffers hold
SMALL_RCVBUF = 64 * 1024


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 20))


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.lost_with: list[BaseException | None] = []
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")

    def eof_received(self) -> None:
        self.calls.append("eof_received")

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost_with.append(exc)
        if not self.lost.done():
            self.lost.set_result(None)


def reset_on_close(sock: socket.socket) -> None:
    """SO_LINGER with a zero timeout: close() sends a RST instead of a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@contextmanager
def asyncio_warnings() -> Iterator[list[str]]:
    """Collect what is logged on the asyncio logger at WARNING and above."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(logging.WARNING)
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addHandler(handler)
    try:
        yield messages
    finally:
        asyncio_logger.removeHandler(handler)


# -- a reset in the middle of a large write -------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_peer_reset_during_a_large_write(any_loop: asyncio.AbstractEventLoop, side: str) -> None:
    """connection_lost is called exactly once, with the error, and nothing after it; the
    exception handler is not bothered (a reset is an OSError, as in asyncio)."""

    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        contexts: list[dict[str, Any]] = []
        event_loop.set_exception_handler(lambda _, ctx: contexts.append(ctx))
        if side == "client":
            listener = socket.create_server(("127.0.0.1", 0))
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
            with listener:
                transport, protocol = await event_loop.create_connection(Recorder, *listener.getsockname())
                peer, _ = listener.accept()
            server = None
        else:
            made: list[Recorder] = []

            def new_recorder() -> Recorder:
                made.append(Recorder())
                return made[-1]

            server = await event_loop.create_server(new_recorder, "127.0.0.1", 0)
            peer = socket.socket()
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
            peer.setblocking(False)
            await event_loop.sock_connect(peer, server.sockets[0].getsockname())
            while not made or made[0].transport is None:
                await asyncio.sleep(0.005)
            protocol = made[0]
            assert protocol.transport is not None
            transport = protocol.transport
        with peer:
            peer.setblocking(False)
            transport.write(BIG)
            assert transport.get_write_buffer_size() > 0, "the reset must hit a pending write"
            first = await event_loop.sock_recv(peer, 65536)  # the peer takes a little ...
            assert first == BIG[: len(first)]
            reset_on_close(peer)
        # ... and resets the connection (peer closed on leaving the block above).
        await asyncio.wait_for(protocol.lost, 10)
        for _ in range(20):  # let any stray callback run: none may reach the protocol
            await asyncio.sleep(0.005)
            transport.write(b"ignored")  # tolerated after the loss
        assert protocol.calls.count("connection_lost") == 1
        assert protocol.calls[-1] == "connection_lost", protocol.calls
        assert protocol.calls[0] == "connection_made"
        assert set(protocol.calls[1:-1]) <= {"pause_writing"}, protocol.calls
        [error] = protocol.lost_with
        assert isinstance(error, (ConnectionResetError, BrokenPipeError)), repr(error)
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert contexts == []
        if server is not None:
            server.close()
            await server.wait_closed()

    run(any_loop, scenario())


def test_peer_reset_while_only_reading(any_loop: asyncio.AbstractEventLoop) -> None:
    """No write pending: the reset comes through the read path, with the same guarantees."""

    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        contexts: list[dict[str, Any]] = []
        event_loop.set_exception_handler(lambda _, ctx: contexts.append(ctx))
        with socket.create_server(("127.0.0.1", 0)) as listener:
            transport, protocol = await event_loop.create_connection(Recorder, *listener.getsockname())
            peer, _ = listener.accept()
        with peer:
            # Unread data on the peer's side makes its close() a reset even without SO_LINGER;
            # SO_LINGER 0 makes sure.
            transport.write(b"unread by the peer")
            await asyncio.sleep(0.01)
            reset_on_close(peer)
        await asyncio.wait_for(protocol.lost, 10)
        await asyncio.sleep(0.05)
        assert protocol.calls == ["connection_made", "connection_lost"]
        [error] = protocol.lost_with
        assert isinstance(error, ConnectionResetError), repr(error)
        assert contexts == []

    run(any_loop, scenario())


# -- writing to a closing, closed or lost transport ------------------------------------------


def write_after(event_loop: asyncio.AbstractEventLoop, how: str) -> dict[str, Any]:
    """Connect, end the connection `how`, then write 8 more times; report what happened."""

    async def scenario() -> dict[str, Any]:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_RCVBUF)
        with listener:
            transport, protocol = await asyncio.get_running_loop().create_connection(Recorder, *listener.getsockname())
            peer, _ = listener.accept()
        peer.setblocking(False)
        outcome: dict[str, Any] = {"raised": []}
        with peer, asyncio_warnings() as warnings:
            if how == "close":
                transport.close()
            elif how == "close with data pending":
                transport.write(BIG[: 8 << 20])
                transport.close()
            elif how == "abort":
                transport.abort()
            elif how == "after connection_lost":
                transport.close()
                await protocol.lost
            elif how == "peer reset":
                reset_on_close(peer)
                peer.close()
                await asyncio.wait_for(protocol.lost, 5)
            for n in range(8):
                try:
                    transport.write(b"late write %d;" % n)
                except Exception as exc:  # noqa: BLE001 - recording, for the comparison
                    outcome["raised"].append(type(exc).__name__)
            await asyncio.wait_for(protocol.lost, 10) if how != "close with data pending" else None
            received = bytearray()
            if how != "peer reset":
                while chunk := await asyncio.get_running_loop().sock_recv(peer, 1 << 20):
                    received += chunk
            await asyncio.wait_for(protocol.lost, 10)
            await asyncio.sleep(0.01)
        outcome["warnings"] = warnings
        outcome["received"] = len(received)
        outcome["late writes delivered"] = received.count(b"late write")
        outcome["lost"] = [type(exc).__name__ if exc else None for exc in protocol.lost_with]
        outcome["closing"] = transport.is_closing()
        return outcome

    return run(event_loop, scenario())  # type: ignore[no-any-return]


@pytest.mark.parametrize("how", ["close", "close with data pending", "abort", "after connection_lost", "peer reset"])
def test_writes_after_the_end_match_asyncio(how: str) -> None:
    asyncio_outcome, ferroloop_outcome = on_both_loops(lambda loop: write_after(loop, how))
    assert asyncio_outcome["raised"] == []  # asyncio tolerates them; so must ferroloop
    if how != "close with data pending":
        # Dropped and counted: from the fifth loss on, each write logs a warning.
        assert asyncio_outcome["warnings"] == ["socket.send() raised exception."] * 4
        assert asyncio_outcome["late writes delivered"] == 0
    assert ferroloop_outcome == asyncio_outcome


# -- running out of file descriptors while accepting -------------------------------------------

EMFILE_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, logging, os, resource, socket, sys
    import ferroloop

    CLIENTS = 24
    HEADROOM = 6  # descriptors left for accepting once the limit is lowered

    records = []
    class Collect(logging.Handler):
        def emit(self, record):
            error = record.exc_info[1] if record.exc_info else None
            records.append([record.getMessage().splitlines()[0], getattr(error, "errno", None)])
    logging.getLogger("asyncio").addHandler(Collect(logging.ERROR))

    class Echo(asyncio.Protocol):
        transports = []
        def connection_made(self, transport):
            Echo.transports.append(transport)
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)

    async def main():
        loop = asyncio.get_running_loop()
        # Client sockets are made before the limit drops: connecting needs no new descriptor.
        clients = [socket.socket() for _ in range(CLIENTS)]
        spare = socket.socket()  # for a connection after the recovery
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=128)
        address = server.sockets[0].getsockname()
        in_use = len(os.listdir("/proc/self/fd"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + HEADROOM, hard))
        for client in clients:
            client.setblocking(False)
            client.connect_ex(address)
        for _ in range(500):
            if records:
                break
            await asyncio.sleep(0.01)
        accepted_before = len(Echo.transports)
        logged = list(records)
        # The server must not spin on the listening socket meanwhile: it backs off.
        await asyncio.sleep(0.2)
        accepted_while_starved = len(Echo.transports)
        # Free descriptors: close what was accepted, and every client. The connections still
        # waiting in the backlog are then accepted, see their EOF and close, in bursts between
        # the server's back-off pauses (asyncio waits a second before accepting again).
        for transport in Echo.transports:
            transport.close()
        for client in clients:
            client.close()
        for _ in range(600):
            if len(Echo.transports) >= CLIENTS:
                break
            await asyncio.sleep(0.01)
        accepted_total = len(Echo.transports)
        # A new connection is served end to end.
        spare.setblocking(False)
        await loop.sock_connect(spare, address)
        await loop.sock_sendall(spare, b"after recovery")
        echoed = await asyncio.wait_for(loop.sock_recv(spare, 100), 5)
        for transport in Echo.transports:
            transport.close()
        spare.close()
        server.close()
        print(json.dumps({
            "accepted_before": accepted_before,
            "accepted_while_starved": accepted_while_starved,
            "accepted_total": accepted_total,
            "clients": CLIENTS,
            "logged": logged[:1],
            "echoed": echoed.decode(),
            "loop": type(loop).__module__,
        }))

    factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else asyncio.new_event_loop
    loop = factory()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 20))
    finally:
        loop.close()
    """
)


@pytest.mark.parametrize("loop_name", ["asyncio", "ferroloop"])
def test_accept_out_of_file_descriptors(loop_name: str) -> None:
    result = run_python("-c", EMFILE_SCRIPT, loop_name, timeout=40)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["loop"] == ("ferroloop._loop" if loop_name == "ferroloop" else "asyncio.unix_events")
    # It ran out: fewer accepted than connected, and the server said why.
    assert 0 < outcome["accepted_before"] < outcome["clients"]
    assert outcome["logged"], "the EMFILE was not logged"
    assert outcome["logged"][0] == ["socket.accept() out of system resource", errno.EMFILE]
    # Backing off, it did not accept (nor fail) in a tight loop meanwhile.
    assert outcome["accepted_while_starved"] == outcome["accepted_before"]
    # And once descriptors were free it served everyone, new connections included.
    assert outcome["accepted_total"] == outcome["clients"]
    assert outcome["echoed"] == "after recovery"


# -- a reader that never reads, a writer that ignores pause_writing ----------------------------

MEMORY_SCRIPT = textwrap.dedent(
    """
    import asyncio, gc, hashlib, json, os, socket, sys
    import ferroloop

    CHUNK = 1 << 20
    CHUNKS = 64  # 64 MiB in all

    def rss():
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    class Writer(asyncio.Protocol):
        def __init__(self):
            self.calls = []
            self.lost = asyncio.get_running_loop().create_future()
        def pause_writing(self):
            self.calls.append("pause_writing")  # and ignored
        def resume_writing(self):
            self.calls.append("resume_writing")
        def connection_lost(self, exc):
            self.lost.set_result(exc)

    def chunk(n):
        return n.to_bytes(4, "big") * (CHUNK // 4)

    async def main():
        loop = asyncio.get_running_loop()
        listener = socket.create_server(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        transport, protocol = await loop.create_connection(Writer, *listener.getsockname())
        reader, _ = listener.accept()
        reader.setblocking(False)
        gc.collect()
        before = rss()
        sent_digest = hashlib.sha256()
        for n in range(CHUNKS):
            data = chunk(n)  # a fresh object each time; the writer keeps no reference
            sent_digest.update(data)
            transport.write(data)
            del data
        gc.collect()
        buffered = transport.get_write_buffer_size()
        grown = rss() - before
        # What the kernel may hold at most: the writer's send buffer and the reader's receive
        # buffer (Linux reports both doubled, for its bookkeeping: an upper bound).
        writer_socket = transport.get_extra_info("socket")
        kernel_capacity = (writer_socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                           + reader.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        # Now the reader reads everything.
        received = 0
        received_digest = hashlib.sha256()
        buf = bytearray(1 << 18)
        while received < CHUNK * CHUNKS:
            n = await loop.sock_recv_into(reader, buf)
            if not n:
                break
            received_digest.update(memoryview(buf)[:n])
            received += n
        await asyncio.sleep(0.01)
        after_drain = transport.get_write_buffer_size()
        transport.close()
        await asyncio.wait_for(protocol.lost, 5)
        reader.close()
        listener.close()
        print(json.dumps({
            "handed_to_write": CHUNK * CHUNKS,
            "buffered": buffered,
            "kernel_capacity": kernel_capacity,
            "rss_growth": grown,
            "received": received,
            "in_order": received_digest.hexdigest() == sent_digest.hexdigest(),
            "after_drain": after_drain,
            "calls": protocol.calls,
            "loop": type(loop).__module__,
        }))

    factory = ferroloop.new_event_loop if sys.argv[1] == "ferroloop" else asyncio.new_event_loop
    loop = factory()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 30))
    finally:
        loop.close()
    """
)


@pytest.mark.parametrize("loop_name", ["asyncio", "ferroloop"])
def test_unread_peer_and_a_writer_that_ignores_pause_writing(loop_name: str) -> None:
    result = run_python("-c", MEMORY_SCRIPT, loop_name, timeout=50)
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["loop"] == ("ferroloop._loop" if loop_name == "ferroloop" else "asyncio.unix_events")
    handed = outcome["handed_to_write"]
    buffered = outcome["buffered"]
    # The transport holds what it was given and could not send yet: no more, and nothing lost
    # (the kernel took the rest: at most the socket buffers of a reader that never reads).
    assert 0 < buffered <= handed
    # (+1 MiB: TCP may queue a segment or so past the send buffer's limit)
    assert handed - buffered <= outcome["kernel_capacity"] + (1 << 20), (
        f"only {buffered} of {handed} bytes are accounted for"
    )
    # Memory grew by what is buffered (one copy), not by more.
    assert outcome["rss_growth"] <= buffered * 1.15 + (8 << 20), (
        f"RSS grew {outcome['rss_growth'] >> 20} MiB for {buffered >> 20} MiB buffered"
    )
    # Once the reader read, every byte arrived, in order.
    assert outcome["received"] == handed
    assert outcome["in_order"]
    assert outcome["after_drain"] == 0
    assert outcome["calls"] == ["pause_writing", "resume_writing"]
