"""Datagrams that pile up before the loop reads them. ferroloop takes them several at a time
(`recvmmsg`, up to 32 per readable event) where asyncio takes one per iteration; these pin
down that a program cannot tell: every datagram arrives once, in order, with its sender's
address; closing, pausing or replacing the protocol inside `datagram_received` acts on the
very next datagram; an exception there loses none; socket errors reach `error_received` in
the order the socket reports them. Each scenario queues more datagrams than one batch (8)
and one readable event (32) take, and runs on asyncio's loop and on ferroloop with the same
assertions (`any_loop`), or compares the two (`on_both_loops`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ferro_helpers import on_both_loops

pytestmark = pytest.mark.timeout(60)

#: More than one recvmmsg batch and more than one readable event's worth.
QUEUED = 70


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 30))


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class Collector(asyncio.DatagramProtocol):
    """Records every callback in order; `react(n, data)` runs after the n-th datagram."""

    def __init__(self, react: Callable[[int, bytes], None] = lambda n, data: None) -> None:
        self.react = react
        self.transport: asyncio.DatagramTransport | None = None
        self.datagrams: list[tuple[bytes, Any]] = []
        self.events: list[str] = []
        self.arrived = asyncio.Event()
        self.expected = 0
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))
        self.events.append(data.decode())
        if len(self.datagrams) >= self.expected:
            self.arrived.set()
        self.react(len(self.datagrams), data)

    def error_received(self, exc: Exception) -> None:
        self.events.append(type(exc).__name__)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("connection_lost")
        self.lost.set_result(exc)

    async def wait_for(self, count: int) -> None:
        self.expected = count
        if len(self.datagrams) < count:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 10)


async def endpoint(
    react: Callable[[int, bytes], None] = lambda n, data: None, host: str = "127.0.0.1"
) -> tuple[asyncio.DatagramTransport, Collector, Any]:
    transport, protocol = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Collector(react), local_addr=(host, 0)
    )
    return transport, protocol, transport.get_extra_info("sockname")


def senders(family: socket.AddressFamily, host: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        socks.append(sock)
    return socks


def queue(sender: socket.socket, to: Any, first: int, count: int) -> list[bytes]:
    """Send numbered datagrams without letting the loop run: they wait in the socket."""
    payloads = [f"d{i}".encode() for i in range(first, first + count)]
    for payload in payloads:
        sender.sendto(payload, to)
    return payloads


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_queued_datagrams_arrive_all_in_order_with_their_senders(
    any_loop: asyncio.AbstractEventLoop, host: str
) -> None:
    if host == "::1" and not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback on this machine")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def scenario() -> None:
        transport, protocol, address = await endpoint(host=host)
        peers = senders(family, host, 3)
        try:
            expected = []
            for i in range(QUEUED):
                peer = peers[i % len(peers)]
                peer.sendto(f"d{i}".encode(), address)
                expected.append((f"d{i}".encode(), peer.getsockname()))
            await protocol.wait_for(QUEUED)
            assert protocol.datagrams == expected
            # Replies to those addresses reach the right peers (the echo pattern).
            for data, addr in protocol.datagrams[:6]:
                transport.sendto(b"re " + data, addr)
            for i in range(6):
                peer = peers[i % len(peers)]
                peer.settimeout(5)
                assert peer.recvfrom(100) == (f"re d{i}".encode(), address)
        finally:
            for peer in peers:
                peer.close()
        transport.close()
        await protocol.lost

    run(any_loop, scenario())


@pytest.mark.parametrize("close_at", [1, 3, 9, 33])
def test_close_inside_datagram_received_stops_delivery(any_loop: asyncio.AbstractEventLoop, close_at: int) -> None:
    """The datagrams after the one that closed the endpoint are delivered to nobody: not to
    the closed endpoint, not to a new endpoint that gets the same socket number."""

    def close_on(n: int, data: bytes) -> None:
        if n == close_at:
            assert protocol.transport is not None
            protocol.transport.close()

    async def scenario() -> None:
        nonlocal protocol
        transport, protocol, address = await endpoint(close_on)
        fd = transport.get_extra_info("socket").fileno()
        (peer,) = senders(socket.AF_INET, "127.0.0.1", 1)
        with peer:
            sent = queue(peer, address, 0, QUEUED)
            await protocol.lost
            await asyncio.sleep(0.05)
            assert [d for d, _ in protocol.datagrams] == sent[:close_at]
            assert protocol.events[-1] == "connection_lost"
            fresh, fresh_protocol, fresh_address = await endpoint()
            assert fresh.get_extra_info("socket").fileno() == fd
            peer.sendto(b"fresh", fresh_address)
            await fresh_protocol.wait_for(1)
            await asyncio.sleep(0.05)
            assert fresh_protocol.datagrams == [(b"fresh", peer.getsockname())]
            assert [d for d, _ in protocol.datagrams] == sent[:close_at]
            fresh.close()
            await fresh_protocol.lost

    protocol: Collector
    run(any_loop, scenario())


@pytest.mark.parametrize(("pause_at", "more_while_paused"), [(2, 5), (9, 0), (40, 5), (QUEUED - 1, 0)])
def test_pause_inside_datagram_received_keeps_the_rest_for_resume(
    any_loop: asyncio.AbstractEventLoop, pause_at: int, more_while_paused: int
) -> None:
    """Also when the socket has nothing new by the time reading resumes (the last datagram
    taken, not yet delivered, is all that is left)."""

    def pause_on(n: int, data: bytes) -> None:
        if n == pause_at:
            assert protocol.transport is not None
            protocol.transport.pause_reading()  # type: ignore[attr-defined]

    async def scenario() -> None:
        nonlocal protocol
        transport, protocol, address = await endpoint(pause_on)
        (peer,) = senders(socket.AF_INET, "127.0.0.1", 1)
        with peer:
            sent = queue(peer, address, 0, QUEUED)
            await protocol.wait_for(pause_at)
            for _ in range(5):
                await asyncio.sleep(0)
            await asyncio.sleep(0.05)
            assert [d for d, _ in protocol.datagrams] == sent[:pause_at]
            sent += queue(peer, address, QUEUED, more_while_paused)  # behind the ones taken
            transport.resume_reading()  # type: ignore[attr-defined]
            await protocol.wait_for(len(sent))
            assert [d for d, _ in protocol.datagrams] == sent
            assert {a for _, a in protocol.datagrams} == {peer.getsockname()}
        transport.close()
        await protocol.lost

    protocol: Collector
    run(any_loop, scenario())


def test_set_protocol_inside_datagram_received_takes_the_next_datagram(any_loop: asyncio.AbstractEventLoop) -> None:
    def switch_on(n: int, data: bytes) -> None:
        if n == 5:
            assert first.transport is not None
            first.transport.set_protocol(second)

    async def scenario() -> None:
        nonlocal first, second
        transport, first, address = await endpoint(switch_on)
        second = Collector()
        (peer,) = senders(socket.AF_INET, "127.0.0.1", 1)
        with peer:
            sent = queue(peer, address, 0, 20)
            await second.wait_for(15)
        assert [d for d, _ in first.datagrams] == sent[:5]
        assert [d for d, _ in second.datagrams] == sent[5:]
        transport.close()
        await second.lost

    first: Collector
    second: Collector
    run(any_loop, scenario())


def test_an_exception_in_datagram_received_loses_no_datagram(any_loop: asyncio.AbstractEventLoop) -> None:
    """Also when it is raised for the last datagram but one, which the socket no longer
    announces once both have been read."""

    def fail_on(n: int, data: bytes) -> None:
        if n in (3, 19):
            raise ZeroDivisionError(n)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        handled: list[Any] = []
        loop.set_exception_handler(lambda _, context: handled.append(context.get("exception")))
        transport, protocol, address = await endpoint(fail_on)
        (peer,) = senders(socket.AF_INET, "127.0.0.1", 1)
        with peer:
            sent = queue(peer, address, 0, 20)
            await protocol.wait_for(20)
        assert [d for d, _ in protocol.datagrams] == sent
        assert [(type(e), e.args) for e in handled] == [(ZeroDivisionError, (3,)), (ZeroDivisionError, (19,))]
        assert not transport.is_closing()
        transport.close()
        await protocol.lost

    run(any_loop, scenario())


def test_socket_errors_reach_error_received_in_the_socket_order() -> None:
    """A connected endpoint with datagrams waiting and a refused send (ICMP port unreachable)
    pending: the socket reports the error and the datagrams in its own order, the same for
    both loops, and the endpoint stays open."""

    def scenario(event_loop: asyncio.AbstractEventLoop) -> Any:
        async def errors() -> Any:
            loop = asyncio.get_running_loop()
            (peer,) = senders(socket.AF_INET, "127.0.0.1", 1)
            peer_address = peer.getsockname()
            transport, protocol = await loop.create_datagram_endpoint(Collector, remote_addr=peer_address)
            address = transport.get_extra_info("sockname")
            queue(peer, address, 0, 12)
            peer.close()
            transport.sendto(b"refused")  # the port is closed now: ECONNREFUSED comes back
            time.sleep(0.05)  # the ICMP error is there before the loop reads
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
                again.bind(peer_address)
                queue(again, address, 12, 12)
                await protocol.wait_for(24)
            closing = transport.is_closing()
            transport.close()
            await protocol.lost
            return protocol.events, closing

        return run(event_loop, errors())

    asyncio_result, ferroloop_result = on_both_loops(scenario)
    events, closing = asyncio_result
    assert "ConnectionRefusedError" in events
    assert [e for e in events if e.startswith("d")] == [f"d{i}" for i in range(24)]
    assert not closing
    assert ferroloop_result == asyncio_result
