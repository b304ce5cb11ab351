"""asyncio's streams (open_connection, start_server, their Unix twins, TLS and start_tls) on top
of the loop's transports: reading APIs, limits, drain/back-pressure, half-close, errors.

Tests run on the standard loop and on ferroloop (fixture `any_loop`) with the same assertions."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

BIG = hashlib.sha256(b"streams").digest() * (1 << 18)  # 8 MiB


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 15))


async def echo_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture(scope="module")
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme", reason="trustme (test extra) makes the certificates")
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return server_context, client_context


def test_reading_apis(any_loop: asyncio.AbstractEventLoop) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"line one\nline two\r\n")
        writer.writelines([b"exactly", b"12345", b"--sep--", b"tail"])
        writer.write(struct.pack("!I", 7) + b"payload")
        await writer.drain()
        writer.write_eof()
        await reader.read()  # until the client closes
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            assert isinstance(writer.transport, asyncio.Transport)
            assert writer.get_extra_info("peername") == server.sockets[0].getsockname()
            assert await reader.readline() == b"line one\n"
            assert await reader.readline() == b"line two\r\n"
            assert await reader.readexactly(12) == b"exactly12345"
            assert await reader.readuntil(b"--sep--") == b"--sep--"
            assert await reader.read(4) == b"tail"
            (size,) = struct.unpack("!I", await reader.readexactly(4))
            assert await reader.readexactly(size) == b"payload"
            assert await reader.read() == b""
            assert reader.at_eof()
            assert await reader.readline() == b""
            with pytest.raises(asyncio.IncompleteReadError) as raised:
                await reader.readexactly(1)
            assert raised.value.partial == b"" and raised.value.expected == 1
            writer.close()
            assert writer.is_closing()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_limits_and_incomplete_reads(any_loop: asyncio.AbstractEventLoop) -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"x" * 300 + b"\n" + b"short")
        await writer.drain()
        writer.close()

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname(), limit=100)
            # ("Separator is found, but chunk is longer than limit" or "... not found, and
            # chunk exceed the limit", depending on how the bytes arrived)
            with pytest.raises(ValueError, match="limit"):
                await reader.readline()
            # readline dropped the overlong line; what follows is intact.
            with pytest.raises(asyncio.IncompleteReadError) as raised:
                await reader.readexactly(10)
            assert raised.value.partial == b"short"
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_big_echo_with_back_pressure(any_loop: asyncio.AbstractEventLoop) -> None:
    """The client writes 8 MiB with drain() while reading slowly: drain must hold the writer
    back (the transport's buffer stays near the high-water mark) and the echo is exact."""

    async def scenario() -> None:
        server = await asyncio.start_server(echo_client, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            high = 64 * 1024
            writer.transport.set_write_buffer_limits(high=high)
            largest_buffer = 0

            async def send() -> None:
                nonlocal largest_buffer
                for start in range(0, len(BIG), 100_000):
                    writer.write(BIG[start : start + 100_000])
                    await writer.drain()
                    largest_buffer = max(largest_buffer, writer.transport.get_write_buffer_size())
                writer.write_eof()

            sending = asyncio.ensure_future(send())
            received = bytearray()
            while chunk := await reader.read(1 << 16):
                received += chunk
                if len(received) % (1 << 20) < (1 << 16):
                    await asyncio.sleep(0.001)
            await sending
            assert received == BIG
            # after each drain() the buffer was at most at the high-water mark
            assert largest_buffer <= high
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_many_concurrent_stream_clients(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(echo_client, "127.0.0.1", 0, backlog=200)
        address = server.sockets[0].getsockname()

        async def client(n: int) -> None:
            reader, writer = await asyncio.open_connection(*address)
            payload = n.to_bytes(2, "big") * (n * 50 + 1)
            writer.write(payload)
            writer.write_eof()
            assert await reader.read() == payload
            writer.close()
            await writer.wait_closed()

        async with server:
            await asyncio.gather(*(client(n) for n in range(150)))

    run(any_loop, scenario())


def test_drain_after_the_peer_is_gone(any_loop: asyncio.AbstractEventLoop) -> None:
    async def scenario() -> None:
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # with SO_LINGER 0: a reset
            accepted.set_result(None)

        server = await asyncio.start_server(slam, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            await accepted
            with pytest.raises(ConnectionResetError):
                for _ in range(100):
                    writer.write(b"x" * 100_000)
                    await writer.drain()
                    await asyncio.sleep(0.01)
            with pytest.raises(ConnectionResetError):
                await reader.read()
            writer.close()

    run(any_loop, scenario())


def test_unix_streams(any_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    path = tmp_path / "streams.sock"

    async def scenario() -> None:
        server = await asyncio.start_unix_server(echo_client, path)
        async with server:
            reader, writer = await asyncio.open_unix_connection(path)
            assert writer.get_extra_info("peername") == str(path)
            writer.write(BIG[: 2 << 20])
            writer.write_eof()
            assert await reader.read() == BIG[: 2 << 20]
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_tls_streams(any_loop: asyncio.AbstractEventLoop, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> None:
    server_context, client_context = tls_contexts

    async def scenario() -> None:
        server = await asyncio.start_server(echo_client, "127.0.0.1", 0, ssl=server_context)
        async with server:
            reader, writer = await asyncio.open_connection(
                *server.sockets[0].getsockname(), ssl=client_context, server_hostname="localhost"
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert isinstance(ssl_object, ssl.SSLObject)
            assert writer.get_extra_info("peercert")["subject"]
            payload = BIG[: 3 << 20]

            async def send() -> None:
                for start in range(0, len(payload), 50_000):
                    writer.write(payload[start : start + 50_000])
                    await writer.drain()

            sending = asyncio.ensure_future(send())
            assert await reader.readexactly(len(payload)) == payload
            await sending
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())


def test_start_tls_upgrades_a_plain_connection(
    any_loop: asyncio.AbstractEventLoop, tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls_contexts

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"GO\n")
        await writer.drain()
        await writer.start_tls(server_context)
        await echo_client(reader, writer)

    async def scenario() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        async with server:
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(b"STARTTLS\n")
            assert await reader.readline() == b"GO\n"
            await writer.start_tls(client_context, server_hostname="localhost")
            assert writer.get_extra_info("ssl_object") is not None
            writer.write(b"secret " * 10_000)
            assert await reader.readexactly(70_000) == b"secret " * 10_000
            writer.close()
            await writer.wait_closed()

    run(any_loop, scenario())
