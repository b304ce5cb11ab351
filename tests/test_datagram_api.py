"""UDP (and Unix datagram) endpoints: create_datagram_endpoint's options, the datagram
transport's sendto/abort/close/get_write_buffer_size/get_extra_info, and the protocol's
datagram_received/error_received. Tests run on the standard loop and on ferroloop (fixture
`any_loop`) with the same assertions, or compare the two where the interpreter's version
decides the behaviour."""

from __future__ import annotations

import asyncio
import logging
import socket
from asyncio import trsock
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

import ferroloop
from ferro_helpers import on_both_loops

pytestmark = pytest.mark.timeout(30)


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 20))


class Datagrams(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.calls: list[str] = []
        self.received: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.calls.append("connection_made")
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.calls.append("datagram_received")
        assert isinstance(data, bytes)
        self.received.put_nowait((data, addr))

    def error_received(self, exc: Exception) -> None:
        self.calls.append("error_received")
        self.errors.put_nowait(exc)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost.set_result(exc)


async def endpoint(**kwargs: Any) -> tuple[asyncio.DatagramTransport, Datagrams]:
    return await asyncio.get_running_loop().create_datagram_endpoint(  # type: ignore[return-value]
        Datagrams, **kwargs
    )


async def receive(protocol: Datagrams) -> tuple[bytes, Any]:
    return await asyncio.wait_for(protocol.received.get(), 5)


def test_datagram_transport_is_an_asyncio_datagram_transport(loop: ferroloop.Loop) -> None:
    """Libraries check isinstance(transport, asyncio.DatagramTransport). (asyncio's own
    datagram transport only became one in 3.12; ferroloop's is one on every version.)"""

    async def scenario() -> None:
        transport, protocol = await endpoint(local_addr=("127.0.0.1", 0))
        assert isinstance(transport, asyncio.DatagramTransport)
        assert isinstance(transport, asyncio.BaseTransport)
        transport.close()
        await protocol.lost

    run(loop, scenario())


def test_unconnected_endpoints_exchange_datagrams(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        a, a_protocol = await endpoint(local_addr=("127.0.0.1", 0))
        b, b_protocol = await endpoint(local_addr=("127.0.0.1", 0))
        a_address = a.get_extra_info("sockname")
        b_address = b.get_extra_info("sockname")
        sock = a.get_extra_info("socket")
        assert isinstance(sock, trsock.TransportSocket)
        assert sock.type == socket.SOCK_DGRAM and sock.getsockname() == a_address
        assert a.get_extra_info("peername") is None
        assert a.get_write_buffer_size() == 0  # type: ignore[attr-defined]  # not in typeshed
        assert a_protocol.calls == ["connection_made"] and a_protocol.transport is a
        for n in range(200):
            payload = f"datagram {n}".encode() * (n % 7 + 1)
            a.sendto(payload, b_address)
            assert await receive(b_protocol) == (payload, a_address)
            b.sendto(bytearray(payload.upper()), a_address)
            assert await receive(a_protocol) == (payload.upper(), b_address)
        big = bytes(range(256)) * 250  # 64000 bytes: one datagram, nearly the largest
        a.sendto(memoryview(big), b_address)
        assert await receive(b_protocol) == (big, a_address)
        assert a.get_write_buffer_size() == 0  # type: ignore[attr-defined]
        with pytest.raises(TypeError, match="data argument must be a bytes-like object"):
            a.sendto("text", b_address)  # type: ignore[arg-type]
        a.close()
        assert a.is_closing()
        b.abort()
        assert b.is_closing()
        assert await a_protocol.lost is None
        assert await b_protocol.lost is None
        assert a_protocol.calls[-1] == b_protocol.calls[-1] == "connection_lost"
        assert a_protocol.calls.count("connection_lost") == 1

    run(any_loop, scenario())


def test_connected_endpoint(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        server, server_protocol = await endpoint(local_addr=("127.0.0.1", 0))
        server_address = server.get_extra_info("sockname")
        client, client_protocol = await endpoint(remote_addr=server_address)
        assert client.get_extra_info("peername") == server_address
        client_address = client.get_extra_info("sockname")
        client.sendto(b"no address needed")
        assert await receive(server_protocol) == (b"no address needed", client_address)
        client.sendto(b"the same address is fine", server_address)
        assert await receive(server_protocol) == (b"the same address is fine", client_address)
        with pytest.raises(ValueError, match=r"Invalid address: must be None or \('127.0.0.1'"):
            client.sendto(b"elsewhere", ("127.0.0.1", 9))
        server.sendto(b"reply", client_address)
        assert await receive(client_protocol) == (b"reply", server_address)
        client.close()
        server.close()
        await client_protocol.lost
        await server_protocol.lost

    run(any_loop, scenario())


def test_error_received_on_refused_datagrams(any_loop: asyncio.AbstractEventLoop) -> None:
    """A connected UDP socket learns of an ICMP port-unreachable: error_received, and the
    endpoint stays open."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed_address = probe.getsockname()  # nothing listens there once the probe closes

    async def scenario() -> None:
        client, protocol = await endpoint(remote_addr=closed_address)
        for _ in range(5):
            client.sendto(b"anyone?")
            await asyncio.sleep(0.02)
            if not protocol.errors.empty():
                break
        error = await asyncio.wait_for(protocol.errors.get(), 5)
        assert isinstance(error, ConnectionRefusedError)
        assert not client.is_closing()
        assert "connection_lost" not in protocol.calls
        client.close()
        assert await protocol.lost is None

    run(any_loop, scenario())


def test_endpoint_options(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        first, first_protocol = await endpoint(local_addr=("127.0.0.1", 0), reuse_port=True)
        port = first.get_extra_info("sockname")[1]
        second, second_protocol = await endpoint(local_addr=("127.0.0.1", port), reuse_port=True)
        broadcaster, broadcaster_protocol = await endpoint(local_addr=("127.0.0.1", 0), allow_broadcast=True)
        broadcast_socket = broadcaster.get_extra_info("socket")
        assert broadcast_socket.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
        assert first.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        for transport in (first, second, broadcaster):
            transport.close()
        for protocol in (first_protocol, second_protocol, broadcaster_protocol):
            assert await protocol.lost is None

        # sock=: an already bound socket, owned by the transport from then on.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        given, given_protocol = await endpoint(sock=sock)
        assert given.get_extra_info("sockname") == sock.getsockname()
        peer, peer_protocol = await endpoint(local_addr=("127.0.0.1", 0))
        peer.sendto(b"to the given socket", sock.getsockname())
        assert (await receive(given_protocol))[0] == b"to the given socket"
        given.close()
        peer.close()
        await given_protocol.lost
        await peer_protocol.lost
        assert sock.fileno() == -1

    run(any_loop, scenario())


def test_ipv6_endpoint(any_loop: asyncio.AbstractEventLoop) -> None:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async def scenario() -> None:
        a, a_protocol = await endpoint(local_addr=("::1", 0), family=socket.AF_INET6)
        b, b_protocol = await endpoint(remote_addr=("::1", a.get_extra_info("sockname")[1]))
        b.sendto(b"over IPv6")
        data, address = await receive(a_protocol)
        assert data == b"over IPv6"
        assert address[:2] == b.get_extra_info("sockname")[:2]
        a.close()
        b.close()
        await a_protocol.lost
        await b_protocol.lost

    run(any_loop, scenario())


def test_unix_datagram_endpoint(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    server_path = str(tmp_path / "server.dgram")
    client_path = str(tmp_path / "client.dgram")

    async def scenario() -> None:
        server, server_protocol = await endpoint(family=socket.AF_UNIX, local_addr=server_path)
        client, client_protocol = await endpoint(family=socket.AF_UNIX, local_addr=client_path, remote_addr=server_path)
        client.sendto(b"unix datagram")
        assert await receive(server_protocol) == (b"unix datagram", client_path)
        server.sendto(b"back", client_path)
        assert await receive(client_protocol) == (b"back", server_path)
        server.close()
        client.close()
        await server_protocol.lost
        await client_protocol.lost

    run(any_loop, scenario())


def test_empty_datagrams_match_asyncio() -> None:
    """Older asyncio drops an empty sendto(); newer (3.13) sends an empty datagram. ferroloop
    does what the running interpreter's asyncio does."""

    def scenario(event_loop: asyncio.AbstractEventLoop) -> list[bytes]:
        async def exchange() -> list[bytes]:
            a, a_protocol = await endpoint(local_addr=("127.0.0.1", 0))
            b, b_protocol = await endpoint(local_addr=("127.0.0.1", 0))
            a.sendto(b"", b.get_extra_info("sockname"))
            a.sendto(b"marker", b.get_extra_info("sockname"))
            received = [(await receive(b_protocol))[0]]
            if received[0] == b"":
                received.append((await receive(b_protocol))[0])
            a.close()
            b.close()
            await a_protocol.lost
            await b_protocol.lost
            return received

        return run(event_loop, exchange())

    asyncio_result, ferroloop_result = on_both_loops(scenario)
    assert asyncio_result in ([b"", b"marker"], [b"marker"])
    assert ferroloop_result == asyncio_result


def test_sendto_after_close_matches_asyncio(caplog: pytest.LogCaptureFixture) -> None:
    """Sends on a closed connected endpoint are dropped and counted; from the fifth on, each
    logs 'socket.send() raised exception.' on the asyncio logger — as asyncio does."""

    def scenario(event_loop: asyncio.AbstractEventLoop) -> tuple[int, list[str]]:
        async def sends_after_close() -> tuple[int, list[str]]:
            server, server_protocol = await endpoint(local_addr=("127.0.0.1", 0))
            client, client_protocol = await endpoint(remote_addr=server.get_extra_info("sockname"))
            client.close()
            caplog.clear()
            for _ in range(8):
                client.sendto(b"after close")  # must not raise
            await client_protocol.lost
            await asyncio.sleep(0.05)
            server.close()
            await server_protocol.lost
            warnings = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
            return server_protocol.received.qsize(), warnings

        return run(event_loop, sends_after_close())

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        asyncio_result, ferroloop_result = on_both_loops(scenario)
    assert asyncio_result == (0, ["socket.send() raised exception."] * 4)
    assert ferroloop_result == asyncio_result
