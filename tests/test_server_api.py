"""The Server object create_server / create_unix_server return, and Unix stream sockets.

Every test runs on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions; where the standard library changed between versions (wait_closed in 3.12,
close_clients/abort_clients and unlinking the socket file in 3.13) the assertion follows the
running interpreter's asyncio, which is what ferroloop must match."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import sys
import uuid
from asyncio import trsock
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

PY312 = sys.version_info >= (3, 12)
PY313 = sys.version_info >= (3, 13)


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 20))


class Echo(asyncio.Protocol):
    """Echoes; the class keeps every instance so a test can reach server-side transports."""

    instances: list[Echo] = []

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.calls: list[str] = []
        Echo.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.calls.append("connection_made")

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.calls.append("connection_lost")
        self.lost.set_result(exc)


@pytest.fixture(autouse=True)
def _fresh_echo_instances() -> None:
    Echo.instances = []


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes = b"ping") -> None:
    writer.write(payload)
    assert await reader.readexactly(len(payload)) == payload


async def until(condition: Any, seconds: float = 5) -> None:
    for _ in range(int(seconds / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


# -- the Server object -------------------------------------------------------------------------


def test_server_basics(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        server = await event_loop.create_server(Echo, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is event_loop
        assert server.is_serving()
        sockets = server.sockets
        assert len(sockets) == 1
        assert isinstance(sockets[0], trsock.TransportSocket)
        host, port = sockets[0].getsockname()
        assert host == "127.0.0.1" and port > 0
        reader, writer = await asyncio.open_connection(host, port)
        await echo_once(reader, writer)
        server.close()
        assert not server.is_serving()
        assert tuple(server.sockets) == ()
        server.close()  # idempotent
        # A closed server accepts nothing, but the connections it has carry on.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        await echo_once(reader, writer, b"still served")
        writer.close()
        await writer.wait_closed()
        await server.wait_closed()
        assert await Echo.instances[0].lost is None

    run(any_loop, scenario())


def test_wait_closed_waits_for_connections(any_loop: asyncio.AbstractEventLoop) -> None:
    """3.12+: wait_closed returns once the server is closed AND its connections are gone.
    3.11: it returns at once on a closed server (and ferroloop must do the same there)."""

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        early_waiter = asyncio.ensure_future(server.wait_closed())
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await echo_once(reader, writer)
        await asyncio.sleep(0.02)
        assert not early_waiter.done(), "wait_closed returned while the server was serving"
        server.close()
        late_waiter = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.05)
        if PY312:
            assert not early_waiter.done() and not late_waiter.done(), "wait_closed must wait for the open connection"
        else:
            assert late_waiter.done()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(asyncio.gather(early_waiter, late_waiter), 5)
        assert Echo.instances[0].lost.done()
        await server.wait_closed()  # and once more, at once

    run(any_loop, scenario())


def test_serve_forever(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        serving = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="is already being awaited on serve_forever"):
            await server.serve_forever()
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await echo_once(reader, writer)
        writer.close()
        await writer.wait_closed()
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()  # cancelling serve_forever closes the server
        assert tuple(server.sockets) == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(any_loop, scenario())


def test_start_serving_later(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0, start_serving=False)
        address = server.sockets[0].getsockname()
        assert not server.is_serving()
        # Not listening yet, as in the standard library: the connection is refused.
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)
        await server.start_serving()
        await server.start_serving()  # a second call is a no-op
        assert server.is_serving()
        reader, writer = await asyncio.open_connection(*address)
        await echo_once(reader, writer)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())


def test_async_with_closes_the_server(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            address = server.sockets[0].getsockname()
        assert not server.is_serving()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(*address)

    run(any_loop, scenario())


@pytest.mark.skipif(not PY313, reason="Server.close_clients/abort_clients are new in 3.13")
@pytest.mark.parametrize("method", ["close_clients", "abort_clients"])
def test_close_and_abort_clients(any_loop: asyncio.AbstractEventLoop, method: str) -> None:
    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        clients = [await asyncio.open_connection(*server.sockets[0].getsockname()) for _ in range(3)]
        for reader, writer in clients:
            await echo_once(reader, writer)
        server.close()
        waiting = asyncio.ensure_future(server.wait_closed())
        await asyncio.sleep(0.02)
        assert not waiting.done()
        getattr(server, method)()
        for echo in Echo.instances:
            assert await echo.lost is None
        await asyncio.wait_for(waiting, 5)
        for reader, writer in clients:
            try:
                assert await reader.read() == b""
            except ConnectionResetError:
                assert method == "abort_clients"
            writer.close()

    run(any_loop, scenario())


def test_server_on_a_given_socket_and_reuse_port(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = await event_loop.create_server(Echo, sock=sock)
        assert server.sockets[0].fileno() == sock.fileno()
        reader, writer = await asyncio.open_connection(*sock.getsockname())
        await echo_once(reader, writer)
        writer.close()
        server.close()
        await server.wait_closed()
        assert sock.fileno() == -1  # the server owns the socket and closed it

        first = await event_loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        port = first.sockets[0].getsockname()[1]
        second = await event_loop.create_server(Echo, "127.0.0.1", port, reuse_port=True)
        for server in (first, second):
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
            server.close()
            await server.wait_closed()

    run(any_loop, scenario())


def test_server_on_several_hosts(any_loop: asyncio.AbstractEventLoop) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python build")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, ["127.0.0.1", "::1"], 0)
        families = sorted(sock.family for sock in server.sockets)
        assert families == sorted([socket.AF_INET, socket.AF_INET6])
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            reader, writer = await asyncio.open_connection(host, port)
            await echo_once(reader, writer, host.encode())
            writer.close()
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())


def test_connect_accepted_socket(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            accepted, _ = listener.accept()
        with client:
            transport, protocol = await event_loop.connect_accepted_socket(Echo, accepted)
            assert isinstance(transport, asyncio.Transport)
            assert transport.get_extra_info("peername") == client.getsockname()
            client.setblocking(False)
            await event_loop.sock_sendall(client, b"accepted")
            assert await event_loop.sock_recv(client, 100) == b"accepted"
            transport.close()
            assert await protocol.lost is None

    run(any_loop, scenario())


# -- Unix sockets ------------------------------------------------------------------------------


@pytest.fixture
def socket_path(tmp_path: Path) -> Path:
    return tmp_path / "server.sock"


async def unix_round_trip(path: str | os.PathLike[str]) -> None:
    reader, writer = await asyncio.open_unix_connection(path)
    await echo_once(reader, writer, b"x" * 300_000)
    writer.write_eof()  # Unix stream transports can half-close too
    assert await reader.read() == b""
    writer.close()
    await writer.wait_closed()


def test_unix_server_and_connection(any_loop: asyncio.AbstractEventLoop, socket_path: Path) -> None:
    async def scenario() -> None:
        event_loop = asyncio.get_running_loop()
        server = await event_loop.create_unix_server(Echo, socket_path)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == str(socket_path)
        transport, protocol = await event_loop.create_unix_connection(asyncio.Protocol, str(socket_path))
        assert isinstance(transport, asyncio.Transport)
        assert transport.can_write_eof()
        assert isinstance(transport.get_extra_info("socket"), trsock.TransportSocket)
        assert transport.get_extra_info("peername") == str(socket_path)
        assert transport.get_extra_info("sockname") == ""
        transport.close()
        await unix_round_trip(socket_path)
        await until(lambda: len(Echo.instances) == 2 and Echo.instances[1].lost.done())
        server_side = Echo.instances[0].transport
        assert server_side is not None
        assert server_side.get_extra_info("sockname") == str(socket_path)
        server.close()
        await server.wait_closed()
        # 3.13 removes the socket file on close; before that it stays.
        assert socket_path.exists() is not PY313

    run(any_loop, scenario())


def test_unix_abstract_namespace(any_loop: asyncio.AbstractEventLoop) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("the abstract socket namespace is Linux-only")
    name = f"\0ferroloop-test-{uuid.uuid4().hex}"

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, name)
        assert server.sockets[0].getsockname() == name.encode()
        await unix_round_trip(name)
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_unix_connection(name)

    run(any_loop, scenario())


def test_stale_unix_socket_file_is_replaced(any_loop: asyncio.AbstractEventLoop, socket_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(socket_path))
    stale.close()  # a crashed server's leftover: the file stays behind
    assert socket_path.is_socket()

    async def scenario() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, socket_path)
        await unix_round_trip(socket_path)
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())


def test_a_regular_file_is_not_replaced(any_loop: asyncio.AbstractEventLoop, socket_path: Path) -> None:
    socket_path.write_text("not a socket")

    async def scenario() -> None:
        with pytest.raises(OSError) as raised:
            await asyncio.get_running_loop().create_unix_server(Echo, socket_path)
        assert raised.value.errno == errno.EADDRINUSE
        assert f"Address {str(socket_path)!r} is already in use" in str(raised.value)

    run(any_loop, scenario())
    assert socket_path.read_text() == "not a socket"


def test_unix_server_on_a_given_socket(any_loop: asyncio.AbstractEventLoop, socket_path: Path) -> None:
    async def scenario() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(socket_path))
        server = await asyncio.get_running_loop().create_unix_server(Echo, sock=sock)
        await unix_round_trip(socket_path)
        server.close()
        await server.wait_closed()

    run(any_loop, scenario())


def test_unix_connection_to_nowhere(any_loop: asyncio.AbstractEventLoop, socket_path: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(FileNotFoundError):
            await asyncio.open_unix_connection(socket_path)

    run(any_loop, scenario())
