"""The stream transport's public API on loopback TCP, as the standard library defines it.

Every test runs on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions, so a difference between the two fails on ferroloop only. The peer is usually a
plain socket driven with the loop's sock_* operations, so what crosses the wire is checked
independently of the transport under test."""

from __future__ import annotations

import array
import asyncio
import gc
import hashlib
import socket
from asyncio import trsock
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import ferroloop

pytestmark = pytest.mark.timeout(30)

BIG = hashlib.sha256(b"ferroloop").digest() * (1 << 19)  # 16 MiB: far beyond socket buffers
SMALL_RCVBUF = 64 * 1024


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 20))


class Recorder(asyncio.Protocol):
    """Records every protocol call in order; `lost` resolves with connection_lost's argument."""

    def __init__(self, eof_keeps_open: bool = False) -> None:
        self.calls: list[str] = []
        self.data = bytearray()
        self.transport: asyncio.Transport | None = None
        self.eof_keeps_open = eof_keeps_open
        self.lost_with: list[BaseException | None] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.got_data = asyncio.Event()
        self.got_eof = asyncio.Event()
        self.write_buffer_at_pause: list[int] = []
        self.write_buffer_at_resume: list[int] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.calls.append("data_received")
        assert isinstance(data, bytes)
        self.data += data
        self.got_data.set()

    def eof_received(self) -> bool:
        self.calls.append("eof_received")
        self.got_eof.set()
        return self.eof_keeps_open

    def pause_writing(self) -> None:
        self.calls.append("pause_writing")
        assert self.transport is not None
        self.write_buffer_at_pause.append(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self.calls.append("resume_writing")
        assert self.transport is not None
        self.write_buffer_at_resume.append(self.transport.get_write_buffer_size())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost_with.append(exc)
        if not self.lost.done():
            self.lost.set_result(exc)

    def calls_after_lost(self) -> list[str]:
        return self.calls[self.calls.index("connection_lost") + 1 :]


class Connected:
    """A transport made by create_connection, and the plain socket at the other end."""

    def __init__(self, transport: asyncio.Transport, protocol: Any, peer: socket.socket) -> None:
        self.transport = transport
        self.protocol = protocol
        self.peer = peer
        self.loop = asyncio.get_running_loop()

    async def peer_reads_until_eof(self) -> bytes:
        received = bytearray()
        while chunk := await self.loop.sock_recv(self.peer, 1 << 18):
            received += chunk
        return bytes(received)

    async def peer_reads_exactly(self, size: int) -> bytes:
        received = bytearray()
        while len(received) < size:
            chunk = await self.loop.sock_recv(self.peer, min(1 << 18, size - len(received)))
            assert chunk, f"EOF after {len(received)} of {size} bytes"
            received += chunk
        return bytes(received)


async def connect(protocol_factory: Callable[[], Any] = Recorder, *, peer_rcvbuf: int | None = None) -> Connected:
    listener = socket.create_server(("127.0.0.1", 0))
    if peer_rcvbuf is not None:  # inherited by the accepted socket: makes writes buffer early
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, peer_rcvbuf)
    with listener:
        transport, protocol = await asyncio.get_running_loop().create_connection(
            protocol_factory, *listener.getsockname()
        )
        peer, _ = listener.accept()
    peer.setblocking(False)
    return Connected(transport, protocol, peer)


async def settle(seconds: float = 0.05) -> None:
    """Let the loop run a few iterations (enough for any readiness already in the kernel)."""
    await asyncio.sleep(seconds)


@pytest.fixture
def peers() -> Iterator[list[socket.socket]]:
    """Peer sockets to close after the test, whatever happened."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def closing(conn: Connected, peers: list[socket.socket]) -> Connected:
    peers.append(conn.peer)
    return conn


# -- types and identity -------------------------------------------------------------------------


def test_transport_types_and_protocol(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        transport = conn.transport
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(transport, asyncio.ReadTransport)
        assert isinstance(transport, asyncio.WriteTransport)
        protocol: Recorder = conn.protocol
        assert transport.get_protocol() is protocol
        assert protocol.transport is transport
        assert protocol.calls == ["connection_made"]
        assert not transport.is_closing()
        transport.close()
        assert await protocol.lost is None

    run(any_loop, scenario())


def test_server_side_transport_types(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        made: list[Recorder] = []

        def factory() -> Recorder:
            made.append(Recorder())
            return made[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(b"ping")
            await writer.drain()
            for _ in range(100):
                if made and made[0].data:
                    break
                await settle(0.01)
            transport = made[0].transport
            assert isinstance(transport, asyncio.Transport)
            assert made[0].data == b"ping"
            assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
            assert transport.get_extra_info("sockname") == server.sockets[0].getsockname()
            writer.close()
            await writer.wait_closed()
            assert await made[0].lost is None
            assert made[0].calls == ["connection_made", "data_received", "eof_received", "connection_lost"]

    run(any_loop, scenario())


# -- write, writelines -----------------------------------------------------------------------------


def test_write_and_writelines_arrive_in_order(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        t = conn.transport
        t.write(b"bytes|")
        t.write(bytearray(b"bytearray|"))
        t.write(memoryview(b"xxmemoryview|xx")[2:-2])
        t.write(b"")  # nothing, and no error
        t.writelines([b"lines:", bytearray(b"a,"), memoryview(b"b,")])
        t.writelines((b"tuple|",))
        t.writelines([])
        t.write(BIG)  # now the rest must queue behind the buffered tail, in order
        t.writelines([b"after", b"-big|"])
        t.write(b"end")
        expected = b"bytes|bytearray|memoryview|lines:a,b,tuple|" + BIG + b"after-big|end"
        assert await conn.peer_reads_exactly(len(expected)) == expected
        t.close()
        assert await conn.peer_reads_until_eof() == b""
        assert await conn.protocol.lost is None

    run(any_loop, scenario())


def test_buffer_may_be_changed_after_write(loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """write() takes what the buffer holds at the call: the caller may reuse or resize it.

    ferroloop only: its transport copies the unsent tail (DESIGN.md, rule 6), as 3.11's asyncio
    did; 3.12+'s asyncio keeps a view of the caller's buffer instead."""

    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t = conn.transport
        payload = bytearray(BIG[: 4 << 20])
        t.write(payload)
        assert t.get_write_buffer_size() > 0, "the test needs an unsent tail"
        payload[:] = b"\0" * len(payload)  # overwrite in place
        payload.clear()  # and resize: would raise BufferError if the transport kept an export
        view_source = bytearray(b"view" * 1000)
        t.write(memoryview(view_source))
        view_source[:] = b"XXXX" * 1000
        expected = BIG[: 4 << 20] + b"view" * 1000
        assert await conn.peer_reads_exactly(len(expected)) == expected
        t.close()
        await conn.protocol.lost

    run(loop, scenario())


def test_multi_byte_memoryviews_are_sent_whole(loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """A memoryview whose items are wider than a byte, or with several dimensions, is sent
    byte for byte even when the socket takes only part of it.

    ferroloop only: asyncio's selector transport slices such a view by items, not bytes, after
    a partial send and loses data (CPython gh-135862)."""

    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        words = array.array("I", range(1 << 20))  # 4 MiB of 4-byte items
        grid = memoryview(bytes(range(256)) * 4).cast("B", (32, 32))
        conn.transport.write(memoryview(words))
        conn.transport.write(grid)
        conn.transport.writelines([memoryview(words)[:1000], grid])
        expected = words.tobytes() + grid.tobytes() + words[:1000].tobytes() + grid.tobytes()
        conn.transport.close()
        assert await conn.peer_reads_until_eof() == expected
        await conn.protocol.lost

    run(loop, scenario())


def test_write_rejects_what_is_not_bytes(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        # The wording is the interpreter's ("bytes-like object" before 3.13.x, "bytes,
        # bytearray, or memoryview object" after); the type's name closes it on every version.
        with pytest.raises(TypeError, match=r"^data argument must be a bytes.* object, not 'str'$"):
            conn.transport.write("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            conn.transport.write(12)  # type: ignore[arg-type]
        assert not conn.transport.is_closing()
        conn.transport.write(b"still fine")
        assert await conn.peer_reads_exactly(10) == b"still fine"
        conn.transport.close()
        await conn.protocol.lost

    run(any_loop, scenario())


def test_writelines_with_a_bad_item_writes_nothing(loop: ferroloop.Loop, peers: list[socket.socket]) -> None:
    # As asyncio 3.11-3.14: the whole call is refused before anything is buffered, and the
    # transport goes on working. (CPython 3.15's writelines buffers the items before the bad
    # one without installing its writer, so its later writes stall: not followed.)
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        with pytest.raises(TypeError):
            conn.transport.writelines([b"ok", "text"])  # type: ignore[list-item]
        assert conn.transport.get_write_buffer_size() == 0
        conn.transport.write(b"still fine")
        assert await conn.peer_reads_exactly(10) == b"still fine"
        conn.transport.close()
        await conn.protocol.lost

    run(loop, scenario())


# -- write_eof, close, abort ----------------------------------------------------------------------


def test_write_eof_half_closes(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t = conn.transport
        assert t.can_write_eof() is True
        t.write(BIG)
        t.write_eof()  # the EOF goes after everything buffered
        t.write_eof()  # a second call is a no-op
        with pytest.raises(RuntimeError, match=r"Cannot call write\(\) after write_eof\(\)"):
            t.write(b"more")
        assert not t.is_closing()
        assert await conn.peer_reads_until_eof() == BIG
        # Only our direction is closed: the peer can still send, and we still read.
        await asyncio.get_running_loop().sock_sendall(conn.peer, b"reply")
        await asyncio.wait_for(conn.protocol.got_data.wait(), 5)
        assert conn.protocol.data == b"reply"
        conn.peer.shutdown(socket.SHUT_WR)
        assert await conn.protocol.lost is None
        assert conn.protocol.calls == [
            "connection_made",
            "pause_writing",
            "resume_writing",
            "data_received",
            "eof_received",
            "connection_lost",
        ]

    run(any_loop, scenario())


def test_close_flushes_then_connection_lost_none(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t = conn.transport
        t.write(BIG)
        t.close()
        assert t.is_closing()
        assert not t.is_reading()
        t.close()  # idempotent
        await settle()
        # The peer has not read: the data is still queued and the connection is not lost yet.
        assert t.get_write_buffer_size() > 0
        assert "connection_lost" not in conn.protocol.calls
        assert await conn.peer_reads_until_eof() == BIG
        assert await conn.protocol.lost is None
        await settle()
        # The buffer drained, so the protocol was resumed before it was told of the close.
        assert conn.protocol.calls == ["connection_made", "pause_writing", "resume_writing", "connection_lost"]
        assert conn.protocol.lost_with == [None]

    run(any_loop, scenario())


def test_close_with_nothing_buffered(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        conn.transport.close()
        # connection_lost is deferred to a later iteration, never called from close() itself.
        assert conn.protocol.calls == ["connection_made"]
        assert await conn.protocol.lost is None
        assert await conn.peer_reads_until_eof() == b""
        # The peer's data after our close is never delivered.
        conn.peer.send(b"late")
        await settle()
        assert conn.protocol.calls == ["connection_made", "connection_lost"]

    run(any_loop, scenario())


def test_abort_drops_the_buffer(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t = conn.transport
        t.write(BIG)
        assert t.get_write_buffer_size() > 0
        t.abort()
        assert t.is_closing()
        assert conn.protocol.calls == ["connection_made", "pause_writing"]  # deferred
        assert await conn.protocol.lost is None
        assert t.get_write_buffer_size() == 0
        t.abort()  # no second connection_lost
        t.close()
        received = await conn.peer_reads_until_eof()
        assert len(received) < len(BIG)
        assert received == BIG[: len(received)]
        await settle()
        # Dropped data never drained: no resume_writing.
        assert conn.protocol.calls == ["connection_made", "pause_writing", "connection_lost"]

    run(any_loop, scenario())


# -- reading: pause, resume, EOF ---------------------------------------------------------------


def test_pause_and_resume_reading(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        t = conn.transport
        assert t.is_reading()
        t.pause_reading()
        assert not t.is_reading()
        t.pause_reading()  # a second pause is a no-op
        conn.peer.sendall(b"held back")
        conn.peer.shutdown(socket.SHUT_WR)
        await settle(0.1)
        assert conn.protocol.calls == ["connection_made"], "nothing is delivered while paused"
        t.resume_reading()
        assert t.is_reading()
        t.resume_reading()  # a second resume is a no-op
        assert await conn.protocol.lost is None  # eof_received returned False: closed
        assert conn.protocol.data == b"held back"
        assert conn.protocol.calls == ["connection_made", "data_received", "eof_received", "connection_lost"]
        assert not t.is_reading()
        t.pause_reading()  # harmless once closed
        t.resume_reading()
        assert not t.is_reading()

    run(any_loop, scenario())


def test_pause_reading_from_data_received(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """A protocol that pauses in data_received gets no more data until it resumes."""

    class Pauser(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.pause_reading()

    async def scenario() -> None:
        conn = closing(await connect(Pauser), peers)
        payload = BIG[: 1 << 20]
        await asyncio.get_running_loop().sock_sendall(conn.peer, payload)
        received = 0
        while len(conn.protocol.data) < len(payload):
            await asyncio.wait_for(conn.protocol.got_data.wait(), 5)
            conn.protocol.got_data.clear()
            delivered = conn.protocol.calls.count("data_received")
            await settle(0.01)
            assert conn.protocol.calls.count("data_received") == delivered, "paused, yet fed"
            assert len(conn.protocol.data) > received
            received = len(conn.protocol.data)
            conn.transport.resume_reading()
        assert conn.protocol.data == payload
        conn.transport.close()
        await conn.protocol.lost

    run(any_loop, scenario())


@pytest.mark.parametrize("keep_open", [True, False])
def test_eof_received_return_value(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], keep_open: bool
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(lambda: Recorder(eof_keeps_open=keep_open)), peers)
        t = conn.transport
        conn.peer.sendall(b"request")
        conn.peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(conn.protocol.got_eof.wait(), 5)
        await settle()
        if not keep_open:
            assert await conn.protocol.lost is None
            assert t.is_closing()
            assert await conn.peer_reads_until_eof() == b""
            return
        # Half-open: we got the peer's EOF but may still answer.
        assert not t.is_closing()
        assert "connection_lost" not in conn.protocol.calls
        t.write(b"response after your EOF")
        assert await conn.peer_reads_exactly(23) == b"response after your EOF"
        t.close()
        assert await conn.peer_reads_until_eof() == b""
        assert await conn.protocol.lost is None
        assert conn.protocol.calls == ["connection_made", "data_received", "eof_received", "connection_lost"]

    run(any_loop, scenario())


# -- flow control ---------------------------------------------------------------------------------


def test_write_buffer_limits(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        t = conn.transport
        assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        t.set_write_buffer_limits(high=100)
        assert t.get_write_buffer_limits() == (25, 100)
        t.set_write_buffer_limits(high=100, low=10)
        assert t.get_write_buffer_limits() == (10, 100)
        t.set_write_buffer_limits(low=100)
        assert t.get_write_buffer_limits() == (100, 400)
        t.set_write_buffer_limits(0)
        assert t.get_write_buffer_limits() == (0, 0)
        t.set_write_buffer_limits()
        assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        with pytest.raises(ValueError, match=r"high \(10\) must be >= low \(20\) must be >= 0"):
            t.set_write_buffer_limits(high=10, low=20)
        with pytest.raises(ValueError):
            t.set_write_buffer_limits(high=10, low=-1)
        assert t.get_write_buffer_limits() == (16 * 1024, 64 * 1024)
        assert t.get_write_buffer_size() == 0
        t.close()
        await conn.protocol.lost

    run(any_loop, scenario())


class ReentrantMark:
    """A water mark whose arithmetic calls back into the transport it is being given to."""

    def __init__(self, value: int, transport: asyncio.Transport) -> None:
        self.value = value
        self.transport = transport

    def _touch(self) -> int:
        self.transport.get_write_buffer_limits()
        self.transport.get_write_buffer_size()
        return self.value

    def __index__(self) -> int:
        return self._touch()

    def __ge__(self, other: Any) -> bool:
        return self._touch() >= other

    def __le__(self, other: Any) -> bool:
        return self._touch() <= other

    def __floordiv__(self, other: int) -> int:
        return self._touch() // other

    def __rmul__(self, other: int) -> int:
        return other * self._touch()


def test_write_buffer_limits_odd_values(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> list[Any]:
        conn = closing(await connect(), peers)
        t = conn.transport
        seen: list[Any] = []
        for high, low in [
            (2**70, None),
            (None, 2**70),
            (2**64 + 3, 2**63),
            (-(2**70), None),
            (None, -(2**70)),
            (10, -(2**70)),
            (2**70, 2**71),
            ("x", None),
            (None, "x"),
            (1.5, None),
            (ReentrantMark(100, t), None),
            (None, ReentrantMark(100, t)),
            (ReentrantMark(100, t), 10),
        ]:
            try:
                t.set_write_buffer_limits(high, low)
            except Exception as exc:  # noqa: BLE001 - the exception type is compared
                assert "panic" not in repr(exc).lower()
                seen.append(type(exc))
            else:
                seen.append("ok")
        t.write(b"x" * 1000)  # the limits in force still work
        t.close()
        await conn.protocol.lost
        return seen

    assert run(any_loop, scenario()) == [
        "ok",
        "ok",
        "ok",
        ValueError,
        ValueError,
        ValueError,
        ValueError,
        TypeError,
        TypeError,
        "ok",
        "ok",
        "ok",
        "ok",
    ]


def test_pause_and_resume_writing_at_the_water_marks(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t, protocol = conn.transport, conn.protocol
        high, low = 256 * 1024, 32 * 1024
        t.set_write_buffer_limits(high=high, low=low)
        chunk = b"w" * 4096
        written = 0
        while "pause_writing" not in protocol.calls:
            size_before = t.get_write_buffer_size()
            t.write(chunk)
            written += len(chunk)
            assert written < 64 << 20, "pause_writing never came"
        # Called from inside the write() that took the buffer over the high-water mark.
        assert size_before <= high < protocol.write_buffer_at_pause[0]
        for _ in range(10):  # writing on while paused: tolerated, no second pause_writing
            t.write(chunk)
            written += len(chunk)
        assert protocol.calls.count("pause_writing") == 1
        assert "resume_writing" not in protocol.calls
        received = await conn.peer_reads_exactly(written)
        assert received == chunk * (written // len(chunk))
        await settle()
        assert protocol.calls == ["connection_made", "pause_writing", "resume_writing"]
        assert protocol.write_buffer_at_resume[0] <= low
        assert t.get_write_buffer_size() == 0
        # Lowering the high-water mark below what is buffered pauses at once.
        t.set_write_buffer_limits(high=64 << 20)
        t.write(BIG)
        assert protocol.calls[-1] == "resume_writing"
        assert t.get_write_buffer_size() > 0
        t.set_write_buffer_limits(high=0)
        assert protocol.calls[-1] == "pause_writing"
        await conn.peer_reads_exactly(len(BIG))
        await settle()
        assert protocol.calls[-1] == "resume_writing"
        t.close()
        await protocol.lost

    run(any_loop, scenario())


def test_failing_pause_writing_goes_to_the_exception_handler(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    class BadFlow(Recorder):
        def pause_writing(self) -> None:
            raise ZeroDivisionError("pause")

        def resume_writing(self) -> None:
            raise ZeroDivisionError("resume")

    async def scenario() -> list[dict[str, Any]]:
        contexts: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: contexts.append(ctx))
        conn = closing(await connect(BadFlow, peer_rcvbuf=SMALL_RCVBUF), peers)
        conn.transport.write(BIG[: 4 << 20])
        await conn.peer_reads_exactly(4 << 20)
        await settle()
        assert not conn.transport.is_closing()  # the transport carries on
        conn.transport.close()
        await conn.protocol.lost
        return contexts

    contexts = run(any_loop, scenario())
    assert [c["message"] for c in contexts] == ["protocol.pause_writing() failed", "protocol.resume_writing() failed"]
    assert all(isinstance(c["exception"], ZeroDivisionError) for c in contexts)
    assert all(isinstance(c["transport"], asyncio.Transport) for c in contexts)
    assert all(isinstance(c["protocol"], BadFlow) for c in contexts)


# -- get_extra_info, set_protocol ----------------------------------------------------------------


def test_get_extra_info(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        t = conn.transport
        sock = t.get_extra_info("socket")
        assert isinstance(sock, trsock.TransportSocket)
        assert sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
        assert sock.getsockname() == conn.peer.getpeername()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)  # set, as asyncio does
        assert t.get_extra_info("sockname") == conn.peer.getpeername()
        assert t.get_extra_info("peername") == conn.peer.getsockname()
        assert t.get_extra_info("no such key") is None
        assert t.get_extra_info("no such key", "fallback") == "fallback"
        for ssl_key in ("sslcontext", "ssl_object", "peercert", "cipher", "compression"):
            assert t.get_extra_info(ssl_key) is None
        peername = t.get_extra_info("peername")
        t.close()
        await conn.protocol.lost
        assert t.get_extra_info("peername") == peername  # still answers after close

    run(any_loop, scenario())


def test_set_protocol_redirects_data(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        first: Recorder = conn.protocol
        conn.peer.sendall(b"to first")
        await asyncio.wait_for(first.got_data.wait(), 5)
        second = Recorder()
        conn.transport.set_protocol(second)
        assert conn.transport.get_protocol() is second
        conn.peer.sendall(b"to second")
        await asyncio.wait_for(second.got_data.wait(), 5)
        conn.peer.close()
        assert await second.lost is None
        assert first.data == b"to first"
        assert first.calls == ["connection_made", "data_received"]
        assert second.data == b"to second"
        assert second.calls == ["data_received", "eof_received", "connection_lost"]

    run(any_loop, scenario())


# -- BufferedProtocol -----------------------------------------------------------------------------


class BufferedRecorder(asyncio.BufferedProtocol):
    def __init__(self, buffer_size: int = 1000) -> None:
        self.buffer = bytearray(buffer_size)
        self.data = bytearray()
        self.calls: list[str] = []
        self.sizehints: list[int] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.calls.append("connection_made")

    def get_buffer(self, sizehint: int) -> memoryview:
        self.sizehints.append(sizehint)
        if not self.calls or self.calls[-1] != "get_buffer":
            self.calls.append("get_buffer")
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        assert 0 < nbytes <= len(self.buffer)
        self.data += self.buffer[:nbytes]
        self.buffer[:nbytes] = b"\xee" * nbytes  # stale bytes must never be delivered again
        self.calls.append("buffer_updated")

    def eof_received(self) -> None:
        self.calls.append("eof_received")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost.set_result(exc)


def test_buffered_protocol_receives_everything(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(BufferedRecorder), peers)
        protocol: BufferedRecorder = conn.protocol
        payload = BIG[: 3 << 20]
        await asyncio.get_running_loop().sock_sendall(conn.peer, payload)
        conn.peer.shutdown(socket.SHUT_WR)
        assert await protocol.lost is None
        assert protocol.data == payload
        assert all(isinstance(hint, int) for hint in protocol.sizehints)
        assert protocol.calls[0] == "connection_made"
        assert protocol.calls[-2:] == ["eof_received", "connection_lost"]
        reads = protocol.calls[1:-2]
        if reads[-1] == "get_buffer":  # a buffer offered for the read that found the EOF
            reads.pop()
        assert reads == ["get_buffer", "buffer_updated"] * (len(reads) // 2)

    run(any_loop, scenario())


def test_switching_to_a_buffered_protocol(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        conn.peer.sendall(b"plain")
        await asyncio.wait_for(conn.protocol.got_data.wait(), 5)
        buffered = BufferedRecorder(buffer_size=7)
        conn.transport.set_protocol(buffered)
        conn.peer.sendall(b"into the buffer, seven bytes at a time")
        conn.peer.shutdown(socket.SHUT_WR)
        assert await buffered.lost is None
        assert conn.protocol.data == b"plain"
        assert buffered.data == b"into the buffer, seven bytes at a time"

    run(any_loop, scenario())


@pytest.mark.parametrize(
    ("failing", "message"),
    [
        ("data_received", "Fatal error: protocol.data_received() call failed."),
        ("get_buffer_raises", "Fatal error: protocol.get_buffer() call failed."),
        ("get_buffer_empty", "Fatal error: protocol.get_buffer() call failed."),
        ("buffer_updated", "Fatal error: protocol.buffer_updated() call failed."),
        ("eof_received", "Fatal error: protocol.eof_received() call failed."),
    ],
)
def test_a_failing_protocol_method_is_fatal(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], failing: str, message: str
) -> None:
    class Failing(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if failing == "data_received":
                raise ZeroDivisionError(failing)

        def eof_received(self) -> bool:
            super().eof_received()
            raise ZeroDivisionError(failing)

    class FailingBuffered(BufferedRecorder):
        def get_buffer(self, sizehint: int) -> memoryview:
            if failing == "get_buffer_raises":
                raise ZeroDivisionError(failing)
            if failing == "get_buffer_empty":
                return memoryview(bytearray())
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes: int) -> None:
            raise ZeroDivisionError(failing)

    async def scenario() -> tuple[list[dict[str, Any]], BaseException | None]:
        contexts: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: contexts.append(ctx))
        factory = Failing if failing in ("data_received", "eof_received") else FailingBuffered
        conn = closing(await connect(factory), peers)
        conn.peer.sendall(b"data")
        if failing == "eof_received":
            await asyncio.wait_for(conn.protocol.got_data.wait(), 5)
            conn.peer.shutdown(socket.SHUT_WR)
        lost = await conn.protocol.lost
        assert conn.transport.is_closing()
        try:
            assert await conn.peer_reads_until_eof() == b""
        except ConnectionResetError:
            pass  # closed with unread data (the failure came before the read): a reset
        return contexts, lost

    contexts, lost = run(any_loop, scenario())
    assert [c["message"] for c in contexts] == [message]
    assert lost is contexts[0]["exception"]
    if failing == "get_buffer_empty":
        assert isinstance(lost, RuntimeError)
        assert str(lost) == "get_buffer() returned an empty buffer"
    else:
        assert isinstance(lost, ZeroDivisionError)
    assert isinstance(contexts[0]["transport"], asyncio.Transport)


# -- sendfile ------------------------------------------------------------------------------------


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    path.write_bytes(BIG[: 5 << 20] + b"tail")
    return path


@pytest.mark.parametrize("fallback", [False, True])
def test_sendfile_over_tcp(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], data_file: Path, fallback: bool
) -> None:
    """fallback=False proves the native os.sendfile path exists for TCP transports."""
    content = data_file.read_bytes()

    async def scenario() -> None:
        conn = closing(await connect(), peers)
        event_loop = asyncio.get_running_loop()
        with data_file.open("rb") as file:
            reading = asyncio.ensure_future(conn.peer_reads_exactly(len(content)))
            conn.transport.write(b"head")  # buffered data goes first
            sent = await event_loop.sendfile(conn.transport, file, fallback=fallback)
            assert sent == len(content)
            assert file.tell() == len(content)
            assert await reading == b"head" + content[:-4]  # the reader asked for len(content)
            rest = await conn.peer_reads_exactly(4)
            assert rest == b"tail"
            # offset and count, and the transport is usable afterwards
            file.seek(0)
            sent = await event_loop.sendfile(conn.transport, file, offset=100, count=1000, fallback=fallback)
            assert sent == 1000
            assert file.tell() == 1100
            assert await conn.peer_reads_exactly(1000) == content[100:1100]
        conn.transport.write(b"after")
        assert await conn.peer_reads_exactly(5) == b"after"
        conn.transport.close()
        assert await conn.protocol.lost is None

    run(any_loop, scenario())


def test_sendfile_refuses_writes_while_in_progress(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], data_file: Path
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        event_loop = asyncio.get_running_loop()
        with data_file.open("rb") as file:
            sending = asyncio.ensure_future(event_loop.sendfile(conn.transport, file))
            await settle(0.01)
            assert not sending.done(), "the peer is not reading: sendfile must be waiting"
            with pytest.raises(RuntimeError, match="unable to write; sendfile is in progress"):
                conn.transport.write(b"x")
            received = await conn.peer_reads_exactly(data_file.stat().st_size)
            assert await sending == len(received)
        assert received == data_file.read_bytes()
        conn.transport.close()
        await conn.protocol.lost

    run(any_loop, scenario())


def test_sendfile_is_not_for_a_closing_transport(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], data_file: Path
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        conn.transport.close()
        with data_file.open("rb") as file:
            with pytest.raises(RuntimeError, match="Transport is closing"):
                await asyncio.get_running_loop().sendfile(conn.transport, file)
        await conn.protocol.lost

    run(any_loop, scenario())


# -- calls back into the transport from protocol callbacks ----------------------------------------


def test_pause_reading_or_close_in_connection_made(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    """Reading starts after connection_made, and respects what connection_made decided."""

    class PausesAtOnce(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            transport.pause_reading()  # type: ignore[attr-defined]

    class ClosesAtOnce(Recorder):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            transport.close()

    async def scenario() -> None:
        paused = closing(await connect(PausesAtOnce), peers)
        paused.peer.sendall(b"wait for it")
        await settle(0.1)
        assert paused.protocol.calls == ["connection_made"]
        assert not paused.transport.is_reading()
        paused.transport.resume_reading()
        await asyncio.wait_for(paused.protocol.got_data.wait(), 5)
        assert paused.protocol.data == b"wait for it"
        paused.transport.close()
        await paused.protocol.lost

        closed = closing(await connect(ClosesAtOnce), peers)
        closed.peer.sendall(b"too late")
        assert await closed.protocol.lost is None
        await settle()
        assert closed.protocol.calls == ["connection_made", "connection_lost"]

    run(any_loop, scenario())


@pytest.mark.parametrize("ending", ["close", "abort"])
def test_ending_the_connection_inside_data_received(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket], ending: str
) -> None:
    class EndsOnFirstData(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None
            self.transport.write(b"bye")
            getattr(self.transport, ending)()
            getattr(self.transport, ending)()  # twice: still one connection_lost

    async def scenario() -> None:
        conn = closing(await connect(EndsOnFirstData), peers)
        await asyncio.get_running_loop().sock_sendall(conn.peer, BIG[: 1 << 20])
        assert await conn.protocol.lost is None
        await settle()
        assert conn.protocol.calls == ["connection_made", "data_received", "connection_lost"]
        try:
            reply = await conn.peer_reads_until_eof()
        except ConnectionResetError:  # we closed with the peer's data unread: a reset
            reply = None
        if ending == "close" and reply is not None:
            assert reply == b"bye"

    run(any_loop, scenario())


def test_writing_from_resume_writing(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """A producer that writes whenever it is resumed: writes re-entering the transport from
    inside its own flush must keep the byte order."""

    class Producer(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.next_piece = 0
            self.done = asyncio.get_running_loop().create_future()

        def produce(self) -> None:
            assert self.transport is not None
            while "pause_writing" not in self.calls[-1:] and self.next_piece < 400:
                self.transport.write(self.next_piece.to_bytes(4, "big") * 8192)  # 32 KiB
                self.next_piece += 1
            if self.next_piece == 400 and not self.done.done():
                self.done.set_result(None)

        def resume_writing(self) -> None:
            super().resume_writing()
            self.produce()

    async def scenario() -> None:
        conn = closing(await connect(Producer, peer_rcvbuf=SMALL_RCVBUF), peers)
        protocol: Producer = conn.protocol
        protocol.produce()
        expected = b"".join(n.to_bytes(4, "big") * 8192 for n in range(400))
        assert await conn.peer_reads_exactly(len(expected)) == expected
        await protocol.done
        assert protocol.calls.count("pause_writing") > 1  # it really went through cycles
        conn.transport.close()
        await protocol.lost

    run(any_loop, scenario())


def test_closing_from_pause_writing(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """close() from inside pause_writing (itself called from inside write()) still flushes."""

    class ClosesWhenFull(Recorder):
        def pause_writing(self) -> None:
            super().pause_writing()
            assert self.transport is not None
            self.transport.close()

    async def scenario() -> None:
        conn = closing(await connect(ClosesWhenFull, peer_rcvbuf=SMALL_RCVBUF), peers)
        conn.transport.write(BIG)
        assert conn.transport.is_closing()
        assert await conn.peer_reads_until_eof() == BIG
        assert await conn.protocol.lost is None

    run(any_loop, scenario())


def test_set_protocol_inside_data_received(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    second: Recorder | None = None

    class HandsOver(Recorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            assert self.transport is not None and second is not None
            self.transport.set_protocol(second)

    async def scenario() -> None:
        nonlocal second
        second = Recorder()
        conn = closing(await connect(HandsOver), peers)
        conn.peer.sendall(b"first")
        await asyncio.wait_for(conn.protocol.got_data.wait(), 5)
        conn.peer.sendall(b"second")
        conn.peer.shutdown(socket.SHUT_WR)
        assert await second.lost is None
        assert conn.protocol.data == b"first"
        assert second.data == b"second"

    run(any_loop, scenario())


def test_writelines_with_many_pieces(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    """More pieces than one vectored write takes (IOV_MAX is 1024 on Linux), while data is
    already queued, mixed with plain writes: all arrive, in order."""

    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        t = conn.transport
        small = [b"%05d," % n for n in range(3000)]
        t.writelines(small)  # nothing queued yet
        t.write(BIG[: 4 << 20])  # now something is
        t.writelines(small)
        t.writelines([BIG[: 1 << 20], b"", memoryview(b"end")])
        expected = b"".join(small) + BIG[: 4 << 20] + b"".join(small) + BIG[: 1 << 20] + b"end"
        t.close()
        assert await conn.peer_reads_until_eof() == expected
        assert await conn.protocol.lost is None

    run(any_loop, scenario())


def test_methods_after_connection_lost_are_harmless(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    async def scenario() -> None:
        conn = closing(await connect(), peers)
        t = conn.transport
        t.close()
        await conn.protocol.lost
        t.pause_reading()
        t.resume_reading()
        assert not t.is_reading()
        assert t.is_closing()
        t.set_write_buffer_limits(high=10)
        assert t.get_write_buffer_limits() == (2, 10)
        assert t.get_write_buffer_size() == 0
        t.write_eof()
        assert t.can_write_eof()
        t.close()
        t.abort()
        assert t.get_protocol() is None  # asyncio lets go of the protocol once it is told
        assert isinstance(t.get_extra_info("socket"), trsock.TransportSocket)
        await settle()
        assert conn.protocol.calls == ["connection_made", "connection_lost"]

    run(any_loop, scenario())


def test_eof_received_false_still_flushes_pending_writes(
    any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]
) -> None:
    """The peer half-closes while a large write is queued; eof_received says "close": the
    close waits for the queue to drain, as close() always does."""

    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        conn.transport.write(BIG)
        assert conn.transport.get_write_buffer_size() > 0
        conn.peer.shutdown(socket.SHUT_WR)
        await asyncio.wait_for(conn.protocol.got_eof.wait(), 5)
        assert conn.transport.is_closing()
        assert "connection_lost" not in conn.protocol.calls
        assert await conn.peer_reads_until_eof() == BIG
        assert await conn.protocol.lost is None

    run(any_loop, scenario())


def test_transports_nobody_references_keep_working(any_loop: asyncio.AbstractEventLoop) -> None:
    """A protocol need not keep its transport, nor the caller the one create_connection
    returned: the loop keeps a connection's transport alive until the connection ends."""

    class Sink(asyncio.Protocol):
        def __init__(self) -> None:
            self.received = 0
            self.lost = asyncio.get_running_loop().create_future()

        def data_received(self, data: bytes) -> None:
            self.received += len(data)

        def connection_lost(self, exc: BaseException | None) -> None:
            self.lost.set_result(exc)

    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        sinks: list[Sink] = []

        def new_sink() -> Sink:
            sinks.append(Sink())
            return sinks[-1]

        server = await event_loop.create_server(new_sink, "127.0.0.1", 0)
        client = socket.create_connection(server.sockets[0].getsockname())
        client.setblocking(False)
        with socket.create_server(("127.0.0.1", 0)) as listener:
            _, client_sink = await event_loop.create_connection(Sink, *listener.getsockname())
            far_end, _ = listener.accept()
        far_end.setblocking(False)
        with client, far_end:
            await asyncio.sleep(0.02)
            gc.collect()
            await event_loop.sock_sendall(client, BIG[: 1 << 20])
            await event_loop.sock_sendall(far_end, BIG[: 1 << 20])
            client.shutdown(socket.SHUT_WR)
            far_end.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(sinks[0].lost, 5) is None
            assert await asyncio.wait_for(client_sink.lost, 5) is None
        assert sinks[0].received == 1 << 20
        assert client_sink.received == 1 << 20
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())


def test_repr_at_every_stage(any_loop: asyncio.AbstractEventLoop, peers: list[socket.socket]) -> None:
    async def scenario() -> None:
        conn = closing(await connect(peer_rcvbuf=SMALL_RCVBUF), peers)
        assert f"fd={conn.transport.get_extra_info('socket').fileno()}" in repr(conn.transport)
        conn.transport.write(BIG)
        assert "bufsize=" in repr(conn.transport)
        conn.transport.close()
        assert "closing" in repr(conn.transport)
        conn.transport.abort()
        await conn.protocol.lost
        assert "closed" in repr(conn.transport)

    run(any_loop, scenario())


def test_sendfile_over_a_unix_stream(any_loop: asyncio.AbstractEventLoop, data_file: Path, tmp_path: Path) -> None:
    path = str(tmp_path / "sendfile.sock")
    content = data_file.read_bytes()

    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        received = bytearray()
        done: asyncio.Future[None] = event_loop.create_future()

        class Collect(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                received.extend(data)

            def eof_received(self) -> None:
                done.set_result(None)

        server = await event_loop.create_unix_server(Collect, path)
        transport, protocol = await event_loop.create_unix_connection(Recorder, path)
        with data_file.open("rb") as file:
            assert await event_loop.sendfile(transport, file) == len(content)
        transport.write_eof()
        await asyncio.wait_for(done, 10)
        assert received == content
        transport.close()
        await protocol.lost
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())
