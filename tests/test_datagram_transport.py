"""The datagram transport's per-datagram behaviour beyond the API basics of
test_datagram_api.py: buffering while the socket would block (Unix datagram sockets block
when the peer's queue is full), flow control, closing and aborting with datagrams buffered,
addresses only the socket module converts, senders and destinations that alternate, fatal and
non-fatal send errors, and pausing reading. Each runs on asyncio's loop and on ferroloop
(`any_loop`) with the same assertions, or compares the two where the release decides."""

from __future__ import annotations

import asyncio
import errno
import socket
from asyncio import selector_events
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from ferro_helpers import on_both_loops

pytestmark = pytest.mark.timeout(60)

HEADER_SIZE: int = getattr(selector_events._SelectorDatagramTransport, "_header_size", 0)  # type: ignore[attr-defined]


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 30))


class Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: list[Exception] = []
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.events.append("error_received")
        self.errors.append(exc)

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("connection_lost")
        self.lost.set_result(exc)


async def unix_sender(tmp_path: Path) -> tuple[socket.socket, asyncio.DatagramTransport, Recorder]:
    """A connected Unix datagram endpoint and the plain socket it sends to (not read until the
    test says)."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "receiver"))
    receiver.setblocking(False)
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        Recorder, family=socket.AF_UNIX, local_addr=str(tmp_path / "sender"), remote_addr=str(tmp_path / "receiver")
    )
    return receiver, transport, protocol  # type: ignore[return-value]


async def fill(transport: asyncio.DatagramTransport, size: int, limit: int = 100_000) -> int:
    """Send numbered datagrams until one is buffered; return how many were sent."""
    for i in range(limit):
        transport.sendto(i.to_bytes(4, "big") + bytes(size - 4))
        if transport.get_write_buffer_size():
            return i + 1
    raise AssertionError("the socket never blocked")


async def drain(receiver: socket.socket, count: int) -> list[int]:
    loop = asyncio.get_running_loop()
    numbers = []
    for _ in range(count):
        data = await loop.sock_recv(receiver, 65536)
        numbers.append(int.from_bytes(data[:4], "big"))
    return numbers


def test_sendto_buffers_while_the_socket_would_block(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    """Once the socket would block, each datagram waits in the transport, counted with the
    release's per-datagram header; the protocol is paused above the high-water mark and
    resumed once drained; every datagram arrives, in order."""

    async def scenario() -> None:
        receiver, transport, protocol = await unix_sender(tmp_path)
        transport.set_write_buffer_limits(high=3000)
        sent = await fill(transport, 1000)
        assert transport.get_write_buffer_size() == 1000 + HEADER_SIZE
        assert protocol.events == []
        for i in range(sent, sent + 3):
            transport.sendto(i.to_bytes(4, "big") + bytes(996))
        assert transport.get_write_buffer_size() == 4 * (1000 + HEADER_SIZE)
        assert protocol.events == ["pause_writing"]
        numbers = await drain(receiver, sent + 3)
        assert numbers == list(range(sent + 3))
        for _ in range(100):
            if transport.get_write_buffer_size() == 0 and protocol.events[-1:] == ["resume_writing"]:
                break
            await asyncio.sleep(0.01)
        assert transport.get_write_buffer_size() == 0
        assert protocol.events == ["pause_writing", "resume_writing"]
        transport.close()
        assert await protocol.lost is None
        receiver.close()

    run(any_loop, scenario())


def test_close_sends_what_is_buffered_then_loses_the_connection(
    any_loop: asyncio.AbstractEventLoop, tmp_path: Path
) -> None:
    async def scenario() -> None:
        receiver, transport, protocol = await unix_sender(tmp_path)
        sent = await fill(transport, 500)
        transport.sendto((sent).to_bytes(4, "big") + bytes(496))
        transport.close()
        assert transport.is_closing()
        await asyncio.sleep(0.05)
        assert not protocol.lost.done()  # waits for the buffer to drain
        assert await drain(receiver, sent + 1) == list(range(sent + 1))
        assert await protocol.lost is None
        assert protocol.events == ["connection_lost"]
        assert transport.get_extra_info("socket").fileno() == -1
        receiver.close()

    run(any_loop, scenario())


def test_abort_drops_what_is_buffered(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    async def scenario() -> None:
        receiver, transport, protocol = await unix_sender(tmp_path)
        sent = await fill(transport, 500)
        transport.sendto(b"never sent")
        transport.abort()
        assert transport.is_closing()
        assert await protocol.lost is None
        assert await drain(receiver, sent - 1) == list(range(sent - 1))
        with pytest.raises(BlockingIOError):
            receiver.recv(65536)
        receiver.close()

    run(any_loop, scenario())


def test_host_names_and_alternating_peers(any_loop: asyncio.AbstractEventLoop) -> None:
    """An address only the socket module resolves ('localhost') works as a literal does, and
    datagrams to and from several peers in turn carry the right addresses."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub, hub_protocol = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        peers = [await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0)) for _ in range(3)]
        hub_port = hub.get_extra_info("sockname")[1]
        for round_ in range(3):
            for i, (peer, _) in enumerate(peers):
                host = "localhost" if (round_ + i) % 2 else "127.0.0.1"
                peer.sendto(f"{round_}:{i}".encode(), (host, hub_port))
                data, addr = await asyncio.wait_for(hub_protocol.received.get(), 5)
                assert data == f"{round_}:{i}".encode()
                assert addr == peer.get_extra_info("sockname")
                hub.sendto(b"back " + data, addr)
                hub.sendto(b"copy " + data, tuple(addr))
        for i, (_, peer_protocol) in enumerate(peers):
            got = [(await asyncio.wait_for(peer_protocol.received.get(), 5)) for _ in range(6)]
            assert [d for d, _ in got] == [f"{kind} {r}:{i}".encode() for r in range(3) for kind in ("back", "copy")]
            assert {a for _, a in got} == {hub.get_extra_info("sockname")}
        for transport, protocol in [(hub, hub_protocol), *peers]:
            transport.close()
            await protocol.lost

    run(any_loop, scenario())


def test_send_errors_match_asyncio() -> None:
    """An OSError from the socket goes to error_received and the endpoint stays open (a
    broadcast without SO_BROADCAST: EACCES); an address the socket module rejects is fatal:
    the exception handler hears of it and connection_lost gets the exception."""

    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        async def errors() -> Any:
            handled: list[str] = []
            event_loop.set_exception_handler(lambda _, context: handled.append(context["message"]))
            transport, protocol = await event_loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
            transport.sendto(b"to everyone", ("255.255.255.255", 9))
            after_oserror = (type(protocol.errors[0]).__name__, transport.is_closing(), list(handled))
            transport.sendto(b"nowhere", 12345)  # not an address
            lost = await protocol.lost
            return after_oserror, type(lost).__name__, handled, protocol.events

        return run(event_loop, errors())

    asyncio_result, ferroloop_result = on_both_loops(scenario)
    # EACCES here; a host without a route for the limited broadcast says ENETUNREACH.
    assert asyncio_result[0] in (("PermissionError", False, []), ("OSError", False, []))
    assert asyncio_result[1] == "TypeError"
    assert ferroloop_result == asyncio_result


def test_pause_and_resume_reading(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a, a_protocol = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        b, b_protocol = await loop.create_datagram_endpoint(Recorder, remote_addr=a.get_extra_info("sockname"))
        await asyncio.sleep(0)
        assert a.is_reading()  # type: ignore[attr-defined]
        a.pause_reading()  # type: ignore[attr-defined]
        assert not a.is_reading()  # type: ignore[attr-defined]
        b.sendto(b"while paused")
        await asyncio.sleep(0.05)
        assert a_protocol.received.empty()
        a.resume_reading()  # type: ignore[attr-defined]
        assert (await asyncio.wait_for(a_protocol.received.get(), 5))[0] == b"while paused"
        a.close()
        assert not a.is_reading()  # type: ignore[attr-defined]
        b.close()
        await a_protocol.lost
        await b_protocol.lost

    run(any_loop, scenario())


def test_datagrams_up_to_the_udp_maximum(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        a, a_protocol = await loop.create_datagram_endpoint(Recorder, local_addr=("127.0.0.1", 0))
        b, b_protocol = await loop.create_datagram_endpoint(Recorder, remote_addr=a.get_extra_info("sockname"))
        for size in (1, 1024, 8192, 65507):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            b.sendto(memoryview(bytearray(payload)))
            data, _ = await asyncio.wait_for(a_protocol.received.get(), 5)
            assert data == payload
        a.close()
        b.close()
        await a_protocol.lost
        await b_protocol.lost

    run(any_loop, scenario())


def test_socket_closed_behind_the_transport_is_not_reused() -> None:
    """The application closes the endpoint's socket and the next socket gets its number:
    sendto reports EBADF to error_received, as asyncio's does, and sends nothing from the
    socket that now has that number."""

    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        async def reuse() -> Any:
            loop = asyncio.get_running_loop()
            sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sink.bind(("127.0.0.1", 0))
            sink.setblocking(False)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("127.0.0.1", 0))
            transport, protocol = await loop.create_datagram_endpoint(Recorder, sock=sock)
            await asyncio.sleep(0)
            number = sock.fileno()
            loop._remove_reader(number)  # type: ignore[attr-defined]  # as closing it via the loop would
            sock.close()
            newcomer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                assert newcomer.fileno() == number
                transport.sendto(b"must not leave", sink.getsockname())
                await asyncio.sleep(0.05)
                with pytest.raises(BlockingIOError):
                    sink.recv(100)
                errnos = [getattr(e, "errno", None) for e in protocol.errors]
                return errnos, transport.is_closing()
            finally:
                transport.abort()
                await protocol.lost
                newcomer.close()
                sink.close()

        return run(event_loop, reuse())

    asyncio_result, ferroloop_result = on_both_loops(scenario)
    assert asyncio_result == ([errno.EBADF], False)
    assert ferroloop_result == asyncio_result
