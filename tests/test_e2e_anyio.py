"""anyio (the layer under httpx, starlette and others) on ferroloop through its asyncio backend's
`loop_factory`: TCP streams, TLS streams, UDP sockets and Unix sockets, plus httpx's client
against a tiny anyio HTTP server."""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

import ferroloop

anyio = pytest.importorskip("anyio", reason="anyio is in the `test` extra")
trustme = pytest.importorskip("trustme", reason="trustme is in the `test` extra")
httpx = pytest.importorskip("httpx", reason="httpx is in the `test` extra")
from anyio.abc import ByteStream, SocketStream  # noqa: E402
from anyio.streams.tls import TLSListener  # noqa: E402

pytestmark = pytest.mark.timeout(60)

BIG = hashlib.sha256(b"anyio").digest() * (3 << 15)  # 3 MiB


def run_on_ferroloop(main: Callable[[], Awaitable[None]]) -> None:
    async def checked() -> None:
        assert type(asyncio.get_running_loop()) is ferroloop.Loop
        with anyio.fail_after(50):
            await main()

    anyio.run(checked, backend="asyncio", backend_options={"loop_factory": ferroloop.new_event_loop})


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


async def echo_until_eof(stream: SocketStream) -> None:
    async with stream:
        try:
            while True:
                await stream.send(await stream.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass


async def send_and_collect(stream: ByteStream, payload: bytes) -> bytes:
    received = bytearray()

    async def sender() -> None:
        for start in range(0, len(payload), 100_000):
            await stream.send(payload[start : start + 100_000])
        await stream.send_eof()

    async with anyio.create_task_group() as group:
        group.start_soon(sender)
        try:
            while True:
                received += await stream.receive()
        except anyio.EndOfStream:
            pass
    return bytes(received)


def test_tcp_stream_echo() -> None:
    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, echo_until_eof)
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                assert stream.extra(anyio.abc.SocketAttribute.remote_port) == port
                assert await send_and_collect(stream, BIG) == BIG
            group.cancel_scope.cancel()

    run_on_ferroloop(main)


def test_tls_stream_echo(tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts

    async def main() -> None:
        tcp_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = tcp_listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
        listener = TLSListener(tcp_listener, server_context, standard_compatible=False)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, echo_until_eof)
            stream = await anyio.connect_tcp(
                "127.0.0.1",
                port,
                tls=True,
                ssl_context=client_context,
                tls_hostname="localhost",
                tls_standard_compatible=False,
            )
            async with stream:
                payload = BIG[: 1 << 20]
                await stream.send(payload)
                received = bytearray()
                while len(received) < len(payload):
                    received += await stream.receive()
                assert received == payload
            group.cancel_scope.cancel()

    run_on_ferroloop(main)


def test_udp_sockets() -> None:
    async def main() -> None:
        async with (
            await anyio.create_udp_socket(local_host="127.0.0.1") as server,
            await anyio.create_connected_udp_socket(
                "127.0.0.1", server.extra(anyio.abc.SocketAttribute.local_port), local_host="127.0.0.1"
            ) as client,
        ):
            for n in range(50):
                await client.send(f"datagram {n}".encode())
                data, address = await server.receive()
                assert data == f"datagram {n}".encode()
                await server.sendto(data.upper(), *address)
                assert await client.receive() == data.upper()

    run_on_ferroloop(main)


def test_unix_stream_echo(tmp_path: Path) -> None:
    path = tmp_path / "anyio.sock"

    async def main() -> None:
        listener = await anyio.create_unix_listener(path)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, echo_until_eof)
            async with await anyio.connect_unix(path) as stream:
                assert await send_and_collect(stream, BIG) == BIG
            group.cancel_scope.cancel()

    run_on_ferroloop(main)


def test_httpx_against_an_anyio_http_server() -> None:
    """A minimal HTTP/1.1 server on anyio streams; httpx (over anyio) as the client."""

    async def handle(stream: SocketStream) -> None:
        async with stream:
            buffered = b""
            try:
                while True:
                    while b"\r\n\r\n" not in buffered:
                        buffered += await stream.receive()
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    while len(buffered) < length:
                        buffered += await stream.receive()
                    body, buffered = buffered[:length], buffered[length:]
                    reply = hashlib.sha256(body).hexdigest().encode()
                    await stream.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(reply), reply))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.listeners[0].extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as group:
            group.start_soon(listener.serve, handle)
            async with httpx.AsyncClient(trust_env=False) as client:
                for size in (0, 10, 100_000, len(BIG)):
                    response = await client.post(f"http://127.0.0.1:{port}/", content=BIG[:size])
                    assert response.text == hashlib.sha256(BIG[:size]).hexdigest()
            group.cancel_scope.cancel()

    run_on_ferroloop(main)
