"""The websockets library's asyncio server and client on ferroloop: an echo over loopback with
text and binary frames, a 1 MB message, many small messages in flight, and the closing
handshake."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import pytest

import ferroloop

websockets = pytest.importorskip("websockets", reason="websockets is in the `test` extra")
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.asyncio.server import ServerConnection, serve  # noqa: E402

pytestmark = pytest.mark.timeout(60)

MAX_SIZE = 4 << 20


async def echo(connection: ServerConnection) -> None:
    assert type(asyncio.get_running_loop()) is ferroloop.Loop
    async for message in connection:
        await connection.send(message)


def run_echo_session(loop: ferroloop.Loop, client_part: Callable[[ClientConnection], Awaitable[None]]) -> None:
    async def main() -> None:
        assert type(asyncio.get_running_loop()) is ferroloop.Loop
        async with serve(echo, "127.0.0.1", 0, max_size=MAX_SIZE) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}", max_size=MAX_SIZE, proxy=None) as ws:
                await client_part(ws)
            assert ws.close_code == 1000  # a clean closing handshake, both ways

    loop.run_until_complete(asyncio.wait_for(main(), 50))


def test_text_and_binary_echo(loop: ferroloop.Loop) -> None:
    async def client_part(ws: ClientConnection) -> None:
        await ws.send("héllo ferroloop")
        assert await ws.recv() == "héllo ferroloop"
        await ws.send(b"\x00\x01\xfe\xff")
        assert await ws.recv() == b"\x00\x01\xfe\xff"
        await ws.send("")
        assert await ws.recv() == ""

    run_echo_session(loop, client_part)


def test_one_megabyte_messages(loop: ferroloop.Loop) -> None:
    binary = hashlib.sha256(b"seed").digest() * (1_000_000 // 32 + 1)
    binary = binary[:1_000_000]
    text = ("ferroloop ✓ " * 90_000)[:1_000_000]

    async def client_part(ws: ClientConnection) -> None:
        await ws.send(binary)
        assert await ws.recv() == binary
        await ws.send(text)
        assert await ws.recv() == text

    run_echo_session(loop, client_part)


def test_many_messages_in_flight(loop: ferroloop.Loop) -> None:
    async def client_part(ws: ClientConnection) -> None:
        messages = [f"message {n} ".encode() * (n % 50 + 1) for n in range(2000)]

        async def sender() -> None:
            for message in messages:
                await ws.send(message)

        sending = asyncio.create_task(sender())
        received = [await ws.recv() for _ in messages]
        await sending
        assert received == messages

    run_echo_session(loop, client_part)


def test_fragmented_message(loop: ferroloop.Loop) -> None:
    async def client_part(ws: ClientConnection) -> None:
        fragments = [bytes([n]) * 70_000 for n in range(10)]
        await ws.send(fragments)  # one message sent as ten frames
        assert await ws.recv() == b"".join(fragments)

    run_echo_session(loop, client_part)
