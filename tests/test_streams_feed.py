"""The stream transport feeding the standard library's `StreamReader` itself (src/transports/
stream_feed.rs): what a program sees must be what asyncio's loop gives — limits, pausing at
twice the limit, partial reads at EOF, cancellation, and subclassed or patched readers and
protocols, which must get their own `feed_data` / `data_received` calls.

Every test runs on the standard loop and on ferroloop (fixture `any_loop`) with the same
assertions."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)

PAYLOAD = hashlib.sha256(b"feed").digest() * (1 << 14)  # 512 KiB: large reads, pauses


def run(event_loop: asyncio.AbstractEventLoop, scenario: Coroutine[Any, Any, Any]) -> Any:
    return event_loop.run_until_complete(asyncio.wait_for(scenario, 15))


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def with_server(serve: Serve, client: Callable[[int], Awaitable[Any]]) -> Any:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        return await client(server.sockets[0].getsockname()[1])


def sender(*chunks: bytes, close: bool = True) -> Serve:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        await asyncio.sleep(0.01)
        if close:
            writer.close()
        else:
            await reader.read()
            writer.close()

    return serve


def test_limit_overrun_then_line_and_partial_at_eof(any_loop: asyncio.AbstractEventLoop) -> None:
    async def client(port: int) -> list[object]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=16)
        seen: list[object] = []
        try:
            await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            seen.append(("overrun", exc.consumed > 16))
        seen.append(await reader.readexactly(40))
        seen.append(await reader.readuntil(b"\n"))
        try:
            await reader.readexactly(100)
        except asyncio.IncompleteReadError as exc:
            seen.append(("incomplete", exc.partial, exc.expected))
        seen.append(reader.at_eof())
        writer.close()
        await writer.wait_closed()
        return seen

    serve = sender(b"x" * 40, b"short\n", b"tail without newline")
    assert run(any_loop, with_server(serve, client)) == [
        ("overrun", True),
        b"x" * 40,
        b"short\n",
        ("incomplete", b"tail without newline", 100),
        True,
    ]


def test_large_payload_pauses_at_twice_the_limit_and_arrives_whole(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    async def client(port: int) -> tuple[bool, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
        while len(reader._buffer) <= 2 * 1024:  # noqa: SLF001 - the stdlib's buffer
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)
        paused = reader._paused  # noqa: SLF001 - what feed_data decided
        received = await reader.readexactly(len(PAYLOAD))
        writer.close()
        await writer.wait_closed()
        return paused, received

    assert run(any_loop, with_server(sender(PAYLOAD, close=False), client)) == (True, PAYLOAD)


def test_cancelled_readexactly_keeps_the_data_for_the_next_read(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    async def client(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        waiting = asyncio.ensure_future(reader.readexactly(10))
        await asyncio.sleep(0.001)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        writer.write(b"go")
        data = await reader.readexactly(10)
        writer.close()
        await writer.wait_closed()
        return data

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(b"0123456789")
        await writer.drain()
        writer.close()

    assert run(any_loop, with_server(serve, client)) == b"0123456789"


class CountingReader(asyncio.StreamReader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fed: list[bytes] = []

    def feed_data(self, data: bytes) -> None:
        self.fed.append(bytes(data))
        super().feed_data(data)


class UpperProtocol(asyncio.StreamReaderProtocol):
    def data_received(self, data: bytes) -> None:
        super().data_received(data.upper())


async def connect_with(
    port: int, reader: asyncio.StreamReader, protocol_type: type[asyncio.StreamReaderProtocol]
) -> asyncio.StreamWriter:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(lambda: protocol_type(reader), "127.0.0.1", port)
    return asyncio.StreamWriter(transport, protocol, reader, loop)


def test_subclassed_reader_and_protocol_get_their_own_calls(
    any_loop: asyncio.AbstractEventLoop,
) -> None:
    async def client(port: int) -> tuple[bytes, bytes, bytes]:
        counting = CountingReader()
        writer = await connect_with(port, counting, asyncio.StreamReaderProtocol)
        via_subclass = await counting.readexactly(5)
        writer.close()
        upper_reader = asyncio.StreamReader()
        writer = await connect_with(port, upper_reader, UpperProtocol)
        via_protocol = await upper_reader.readexactly(5)
        writer.close()
        return via_subclass, b"".join(counting.fed), via_protocol

    assert run(any_loop, with_server(sender(b"hello"), client)) == (b"hello", b"hello", b"HELLO")


def test_feed_data_patched_on_the_instance_is_called(any_loop: asyncio.AbstractEventLoop) -> None:
    async def client(port: int) -> tuple[bytes, list[bytes]]:
        reader = asyncio.StreamReader()
        fed: list[bytes] = []
        original = reader.feed_data

        def feed_data(data: bytes) -> None:
            fed.append(bytes(data))
            original(data)

        reader.feed_data = feed_data  # type: ignore[method-assign]
        writer = await connect_with(port, reader, asyncio.StreamReaderProtocol)
        data = await reader.readexactly(5)
        writer.close()
        return data, fed

    assert run(any_loop, with_server(sender(b"hello"), client)) == (b"hello", [b"hello"])


def test_reader_exception_and_eof_after_feed(any_loop: asyncio.AbstractEventLoop) -> None:
    async def client(port: int) -> tuple[bytes, bool, object]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        data = await reader.read()
        at_eof = reader.at_eof()
        reader.set_exception(ValueError("boom"))
        error = reader.exception()
        writer.close()
        await writer.wait_closed()
        return data, at_eof, type(error)

    assert run(any_loop, with_server(sender(b"abc", b"def"), client)) == (b"abcdef", True, ValueError)
